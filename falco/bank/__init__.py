"""The fake bank: generated faces' w codes and features, with a FAISS index for pairing.

FALCO starts each optimisation from the fake whose features are nearest the real face's
(paper: 60,000 fakes at truncation 0.7, FaRL features, cosine). :func:`build_bank` samples
z with a recorded seed, maps it to w (truncated toward ``w_avg``), renders, embeds, and
writes a bank directory; :class:`Bank` opens it, searches it and pairs real faces with fakes.

What a fake's features are computed from: ``render_256(G, w)`` (the generator's image pooled
to 256 px, noise 'const'), quantised to uint8 (:func:`falco.latent.images.quantize_uint8`), then
the extractor, i.e. exactly what :func:`falco.bank.features.embed_faces` computes for a 256-px
aligned real crop. :func:`render_fakes` renders bank entries the same way.

Bank directory::

    manifest.json                 written last: a bank without it is unfinished
    build.json                    the build's settings, written first (for resuming)
    chunks/chunk_NNNNN.safetensors  ``ws`` [n, w_dim] float32, ``features`` [n, dim] float32
    thumbs/chunk_NNNNN.png        contact sheet of the chunk's fakes (``thumbnail_size`` px each,
                                  row-major, ``thumbnail_cols`` per row); see :meth:`Bank.thumbnail`
    index.faiss                   FeatureIndex over the features (cosine)

Reproducibility and resuming. Fakes are made in chunks of ``chunk_size``; chunk ``c`` draws
``chunk_size`` z vectors on the CPU from a generator seeded with ``SeedSequence([seed, c])``
and keeps the first ones it needs, so fake ``i``'s z depends only on (seed, chunk_size, i),
not on ``num``, the batch size or the device. Each chunk file (and its contact sheet, written
before it) is written atomically; a killed build re-run with the same settings keeps the
finished chunks and makes the rest, and the result equals an uninterrupted build bit for bit
(same device and batch size; the batch size and device of each chunk are recorded in its
metadata). The index and ``manifest.json`` are written after the last chunk.

Compatibility. The manifest records the generator's weight fingerprint (sha256 of its state
dict, :func:`generator_fingerprint`; the model file's sha256 too when the caller passes it)
and the extractor's name, width, preprocessing and fingerprint; :meth:`Bank.check_compatible`
refuses a generator or extractor that differs, since a bank's w codes only mean something to the
generator that made them and its features only to the extractor that made them.

Pairing features. Both sides go through the extractor's one preprocessing function: for FaRL
(the default) the face in [0, 1], resized to 224 px, with CLIP mean/std (``'clip-224-[0,1]'``),
recorded as ``features.preprocessing``. Banks built before that field existed embedded FaRL
faces in [-1, 1] without mean/std (``'farl-224-[-1,1]'``); :meth:`Bank.query_features` embeds
their queries that way, so they pair as before (see :mod:`falco.bank.features`).
"""


from __future__ import annotations

from falco.bank.build import build_bank, chunk_z, generator_fingerprint, render_fakes
from falco.bank.layout import FORMAT
from falco.bank.reader import Bank, bank_status
from falco.bank.index import exact_search
from falco.bank.pairing import pair_without_reuse

__all__ = [
    "FORMAT",
    "Bank",
    "bank_status",
    "build_bank",
    "chunk_z",
    "exact_search",
    "generator_fingerprint",
    "pair_without_reuse",
    "render_fakes",
]

