"""genforce StyleGAN2 checkpoints (FALCO's ``stylegan2_ffhq1024.pth``) in rosinality's layout.

genforce (``StyleGAN2Generator``, vendored by chi0tzp/FALCO in ``models/genforce``) saves
``{'generator', 'discriminator', 'generator_smooth', ...}``; FALCO renders with
``generator_smooth`` (the EMA weights), so that is the one read here. Its conventions and
how each maps onto :class:`~falco.models.stylegan2.Generator` (the math is the same, so the
conversion is exact up to float rounding):

* ``mapping.denseN`` -> ``style.{N+1}``: both keep unscaled weights and multiply at run time
  by ``lr_mul / sqrt(fan_in)`` (``use_wscale``), the bias by ``lr_mul``, then lrelu x sqrt(2).
  A ``mapping_lr_mul`` other than falco's ``lr_mlp`` (0.01, genforce's default too) or
  ``use_wscale=False`` (weights stored pre-scaled) is folded into the stored tensors.
* ``synthesis.layerN.style`` (affine, with genforce's extra ``additional_bias=1``) ->
  ``conv.modulation``, whose stored bias already holds the 1: ``bias + 1``.
* ``synthesis.layerN.weight`` ``[out, in, k, k]`` -> ``conv.weight`` ``[1, out, in, k, k]``.
  genforce flips the kernel of its up-sampling layers (odd N) before ``conv_transpose2d``
  (the TensorFlow convention); rosinality does not, so those kernels are stored flipped.
* ``layerN.noise_strength`` / ``layerN.bias`` / ``layerN.noise`` -> ``noise.weight`` /
  ``activate.bias`` / ``noises.noise_N`` (noise, then bias, then lrelu x sqrt(2) in both).
* ``layer0`` -> ``conv1``, ``layerN`` -> ``convs.{N-1}``, ``output0`` -> ``to_rgb1``,
  ``outputK`` -> ``to_rgbs.{K-1}``; ``wp[:, N]`` feeds ``layerN`` and ``wp[:, 2K+1]``
  feeds ``outputK`` in both, so W+ codes carry over unchanged.
* The [1, 3, 3, 1] filters (``layerN.filter.kernel``, ``upsample.kernel``, gain 4) are
  rosinality's ``blur`` / ``upsample`` kernels; any other filter is refused.
* ``truncation.w_avg`` -> ``w_avg``. genforce truncates ``wp[:, :trunc_layers]``; FALCO calls
  ``get_w(z, truncation)`` whose default ``trunc_layers=18`` covers every layer up to
  1024 px, which is what ``G.mapping(z, truncation_psi)`` does
  (:data:`GET_W_TRUNC_LAYERS`; ``G.truncation_layers`` / ``G.mapping_ws`` for fewer).

Only the configuration FALCO uses is supported (``architecture='skip'``, constant input,
demodulation, spatial noise, no labels, ``repeat_w``, no final tanh, z_dim = w_dim = the
mapping width); a checkpoint that says otherwise is refused with the setting named.
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping

import torch

from falco.errors import CheckpointError
from falco.models.stylegan2 import make_kernel

#: ``StyleGAN2Generator.get_w``'s default ``trunc_layers`` (what FALCO's fake bank used).
GET_W_TRUNC_LAYERS = 18
#: falco's ``Generator(lr_mlp=...)`` default, the mapping learning-rate multiplier of the converted weights.
FALCO_LR_MLP = 0.01

#: genforce constructor settings that cannot be expressed by falco's Generator, with the value it needs.
_REQUIRED_KWARGS = {
    "architecture": "skip", "const_input": True, "demodulate": True, "noise_type": "spatial",
    "label_size": 0, "repeat_w": True, "final_tanh": False, "image_channels": 3,
}


def is_genforce_state(sd: Any) -> bool:
    """Whether ``sd`` is a genforce generator state dict (``mapping.dense0``, ``synthesis.early_layer``)."""
    return isinstance(sd, Mapping) and "mapping.dense0.weight" in sd and "synthesis.early_layer.const" in sd


def is_genforce_checkpoint(ckpt: Mapping[str, Any]) -> bool:
    """A genforce training checkpoint (``generator_smooth`` / ``generator``) or a bare generator state dict."""
    return "generator_smooth" in ckpt or is_genforce_state(ckpt) or is_genforce_state(ckpt.get("generator"))


def generator_smooth(ckpt: Mapping[str, Any], source: str) -> Mapping[str, torch.Tensor]:
    """The EMA generator of a genforce checkpoint (never ``generator``, the raw training weights)."""
    if is_genforce_state(ckpt):
        return ckpt
    if "generator_smooth" not in ckpt:
        raise CheckpointError(source, "genforce checkpoint without 'generator_smooth' (the EMA generator "
                              "FALCO renders with; 'generator' holds the raw training weights and is not used); "
                              f"top-level keys found: {', '.join(map(str, ckpt))}")
    sd = ckpt["generator_smooth"]
    if not is_genforce_state(sd):
        raise CheckpointError(source, "'generator_smooth' is not a genforce StyleGAN2 state dict "
                              "(no 'mapping.dense0.weight' / 'synthesis.early_layer.const')")
    return sd


def _check_init_kwargs(kwargs: Mapping[str, Any], source: str) -> None:
    for name, needed in _REQUIRED_KWARGS.items():
        if name in kwargs and kwargs[name] != needed:
            raise CheckpointError(source, f"genforce init_kwargs {name}={kwargs[name]!r} is not supported "
                                  f"(falco's Generator implements {name}={needed!r})")


def _scaled(tensor: torch.Tensor, ratio: float) -> torch.Tensor:
    """``tensor * ratio`` (genforce run-time scale / falco run-time scale), untouched when it is 1."""
    return tensor if ratio == 1.0 else tensor * ratio


def genforce_to_rosinality(sd: Mapping[str, torch.Tensor], source: str, *,
                           init_kwargs: Mapping[str, Any] | None = None) -> tuple[dict, torch.Tensor | None]:
    """Convert a genforce ``StyleGAN2Generator`` state dict to rosinality key names and conventions.

    Args:
        sd: The generator's state dict (``generator_smooth``).
        source: Checkpoint name for error messages.
        init_kwargs: The generator's constructor arguments when the checkpoint records them
            (genforce's defaults otherwise: ``mapping_lr_mul=0.01``, ``use_wscale=True``).

    Returns:
        ``(state_dict, w_avg_or_None)``.
    """
    kwargs = dict(init_kwargs or {})
    _check_init_kwargs(kwargs, source)
    lr_mul = float(kwargs.get("mapping_lr_mul", FALCO_LR_MLP))
    use_wscale = bool(kwargs.get("use_wscale", True))
    if any(k.startswith("mapping.label_weight") for k in sd):
        raise CheckpointError(source, "conditional genforce generators (mapping.label_weight) are not supported")
    dense = sorted(int(m.group(1)) for k in sd if (m := re.fullmatch(r"mapping\.dense(\d+)\.weight", k)))
    convs = sorted(int(m.group(1)) for k in sd if (m := re.fullmatch(r"synthesis\.layer(\d+)\.weight", k)))
    rgbs = sorted(int(m.group(1)) for k in sd if (m := re.fullmatch(r"synthesis\.output(\d+)\.weight", k)))
    num_blocks = len(rgbs)
    if (num_blocks < 2 or dense != list(range(len(dense))) or convs != list(range(2 * num_blocks - 1))
            or rgbs != list(range(num_blocks))):
        raise CheckpointError(source, f"genforce layers are not contiguous or not the 'skip' architecture: "
                              f"mapping.dense{dense}, synthesis.layer{convs}, synthesis.output{rgbs}")
    widths = sorted({tuple(sd[f"mapping.dense{i}.weight"].shape) for i in dense})
    if len(widths) != 1 or widths[0][0] != widths[0][1]:
        raise CheckpointError(source, f"genforce mapping layers of shapes {widths}: falco's Generator needs "
                              "z_space_dim = w_space_dim = mapping_fmaps (and repeat_w)")
    if any(k.startswith("synthesis.skip_layer") for k in sd):
        raise CheckpointError(source, "genforce 'resnet' architecture is not supported (only 'skip')")

    up_kernel = make_kernel([1, 3, 3, 1]) * 4
    for key, tensor in sd.items():
        if key.endswith("filter.kernel") or key == "synthesis.upsample.kernel":
            if tensor.numel() != up_kernel.numel() or not torch.allclose(
                    tensor.float().reshape(up_kernel.shape), up_kernel, atol=1e-6):
                raise CheckpointError(source, f"{key}: only the [1,3,3,1] resampling filter is supported")

    out: dict[str, torch.Tensor] = {}
    try:
        for i in dense:
            w, b = sd[f"mapping.dense{i}.weight"], sd[f"mapping.dense{i}.bias"]
            # Run time: genforce w * lr_mul / sqrt(in) (w * lr_mul without use_wscale), b * lr_mul;
            # falco's EqualLinear w * lr_mlp / sqrt(in), b * lr_mlp.
            fan_in = 1.0 if use_wscale else math.sqrt(w.shape[1])
            out[f"style.{i + 1}.weight"] = _scaled(w, lr_mul / FALCO_LR_MLP * fan_in)
            out[f"style.{i + 1}.bias"] = _scaled(b, lr_mul / FALCO_LR_MLP)

        def wscaled(w: torch.Tensor) -> torch.Tensor:
            """Synthesis weights (lr_mul 1): stored pre-scaled without use_wscale, falco scales at run time."""
            return w if use_wscale else w * math.sqrt(w[0].numel())

        def modulated(dst: str, src: str, *, flip: bool) -> None:
            w = wscaled(sd[f"{src}.weight"])
            out[f"{dst}.conv.weight"] = (w.flip(2, 3) if flip else w).unsqueeze(0)
            out[f"{dst}.conv.modulation.weight"] = wscaled(sd[f"{src}.style.weight"])
            out[f"{dst}.conv.modulation.bias"] = sd[f"{src}.style.bias"] + 1.0  # genforce's additional_bias

        out["input.input"] = sd["synthesis.early_layer.const"]
        for n in convs:
            dst, src = ("conv1" if n == 0 else f"convs.{n - 1}"), f"synthesis.layer{n}"
            modulated(dst, src, flip=n % 2 == 1)
            out[f"{dst}.noise.weight"] = sd[f"{src}.noise_strength"].reshape(1)
            out[f"{dst}.activate.bias"] = sd[f"{src}.bias"]
            noise = sd[f"{src}.noise"]
            if noise.ndim != 4 or noise.shape[:2] != (1, 1):
                raise CheckpointError(source, f"{src}.noise has shape {list(noise.shape)}: only spatial noise "
                                      "[1, 1, res, res] is supported")
            out[f"noises.noise_{n}"] = noise
            if n % 2 == 1:
                out[f"{dst}.conv.blur.kernel"] = up_kernel.clone()
        for k in rgbs:
            dst, src = ("to_rgb1" if k == 0 else f"to_rgbs.{k - 1}"), f"synthesis.output{k}"
            modulated(dst, src, flip=False)
            out[f"{dst}.bias"] = sd[f"{src}.bias"].reshape(1, -1, 1, 1)
            if k > 0:
                out[f"{dst}.upsample.kernel"] = up_kernel.clone()
    except KeyError as exc:
        raise CheckpointError(source, f"genforce layout is missing tensor {exc.args[0]!r}") from None
    return out, sd.get("truncation.w_avg")


def genforce_generator_state(ckpt: Mapping[str, Any], source: str) -> tuple[dict, torch.Tensor | None]:
    """``generator_smooth`` of a genforce checkpoint, converted (see :func:`genforce_to_rosinality`)."""
    init_kwargs = ckpt.get("init_kwargs")
    return genforce_to_rosinality(generator_smooth(ckpt, source), source,
                                  init_kwargs=init_kwargs if isinstance(init_kwargs, Mapping) else None)


def genforce_truncation_layers(num_ws: int) -> int | None:
    """``Generator.truncation_layers`` matching ``get_w(z, truncation)`` (None: every layer)."""
    return None if GET_W_TRUNC_LAYERS >= num_ws else GET_W_TRUNC_LAYERS
