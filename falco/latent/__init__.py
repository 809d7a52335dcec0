"""FALCO in StyleGAN2's latent space: the modules in the order a face goes through them.

1. ``images``: aligned uint8 faces to float images in [-1, 1] (``to_tensor``).
2. ``invert``: e4e inversion into W+ codes ``ws`` (``encode``, ``invert``, optional ``refine``),
   and ``render_256`` / ``to_256``, the 256-px renders the losses and previews see.
3. (:mod:`falco.bank` pairs each face with a fake's code.)
4. ``losses``: the identity loss (ArcFace, margin ``m``) and the attribute loss (FaRL tokens).
5. ``optimise``: real and fake codes mixed (``mix_codes``), the fake's middle layers optimised
   with those losses (``FalcoParams``, ``optimise``, ``OptimResult``).
6. ``images`` again: the final render quantised to uint8 (``to_uint8``, the one quantiser).

This file imports nothing: import the modules themselves (no import cycles, no cost).
"""
