"""Face feature extractors for pairing real faces with fakes (shared by the bank and real faces).

FALCO pairs each real face with the fake whose features are nearest (cosine). The same
extractor must embed both sides, on the same kind of input: an aligned 256-px face in
[-1, 1] that went through uint8 (a real crop is read from a PNG; a fake is rendered, pooled to
256 px by :func:`falco.latent.invert.render_256` and quantised to uint8, see
:func:`falco.latent.images.quantize_uint8`). Every extractor turns that face into its network's
input with one function, its :meth:`preprocess`, for fakes (:func:`falco.bank.build_bank`)
and reals (:meth:`falco.bank.Bank.query_features`, :func:`embed_faces`) alike.

Preprocessing. Each extractor names what :meth:`preprocess` does with a short id
(``extractor.preprocessing``); banks record it in their manifest (``features.preprocessing``)
and their queries are embedded the same way (:meth:`falco.bank.Bank.query_extractor`):

* ``'farl'`` (default, the paper's): FaRL ViT-B/16 pooled image embedding (``ln_post`` of the
  class token, projected to 512) of ``'clip-224-[0,1]'``: the face mapped to [0, 1], short
  side resized to 224 (antialiased bilinear, torchvision ``Resize(224, antialias=True)``),
  centre-cropped, then CLIP mean/std, as FaRL was trained and as the reference FALCO's
  ``extract_features.py`` feeds it (the reference gives it real faces in [0, 1] but fakes in
  [-1, 1]; falco feeds both in [0, 1]). ``'farl-224-[-1,1]'`` is the preprocessing of banks
  built before it was recorded: the attribute loss's input (the face in [-1, 1], resized the
  same way, no mean/std); such a bank's manifest has no ``preprocessing`` field, and its
  queries are still embedded that way. (224 is the network's resolution: a tiny test model's
  ids read ``'clip-32-[0,1]'``.) The attribute loss itself always keeps its own input
  convention (:class:`falco.models.farl.FaRLEncoder`); only the pairing embedding differs.
* ``'clip'``: OpenAI CLIP ViT-B/16 through open_clip (QuickGELU, fp32) with CLIP's own
  preprocessing, ``'clip-224-[0,1]-bicubic'`` ([0, 1], bicubic resize of the short side to
  224, centre crop, CLIP mean/std; unchanged since CLIP banks were first built). Weights are
  looked up locally only (see :data:`CLIP_FILES`); OpenAI's TorchScript ``ViT-B-16.pt`` is
  refused (falco executes no code from a checkpoint).
* ``'arcface'``: the identity role's ArcFace embedding (512-d) of the identity loss's input,
  ``'arcface-256-crop-112-[-1,1]'``: the face in [-1, 1] (IR-SE50's training range) at 256 px,
  cropped to ``[35:223, 32:220]`` and average-pooled to 112 (unchanged). Pairing by identity
  is not what FALCO does; it is there for experiments.

Every extractor returns float32 L2-normalised features ``[B, dim]`` and has a ``fingerprint``
(sha256 of its weights and preprocessing) that banks record so that real faces are never
compared with fakes embedded by another network or another preprocessing.
"""

from __future__ import annotations

import copy
import hashlib
import os
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from falco.errors import CheckpointError, InputError, ModelNotFoundError

__all__ = [
    "CLIP_FILES",
    "EXTRACTORS",
    "ArcFaceExtractor",
    "ClipExtractor",
    "FarlExtractor",
    "FeatureExtractor",
    "clip_input",
    "embed",
    "embed_faces",
    "extractor_fingerprint",
    "load_extractor",
    "module_fingerprint",
]

EXTRACTORS = ("farl", "clip", "arcface")

#: Files accepted for ``'clip'`` in the model set directory (open_clip / OpenAI-CLIP key
#: layouts, loaded without executing code), in order of preference. Besides these, the
#: Hugging Face cache entry open_clip itself uses (``timm/vit_base_patch16_clip_224.openai``)
#: is used when present. Nothing is downloaded.
CLIP_FILES = (
    "clip-vit-b-16-openai.safetensors",
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.bin",
)
CLIP_HF_REPO = "timm/vit_base_patch16_clip_224.openai"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@runtime_checkable
class FeatureExtractor(Protocol):
    """What the bank and the pairing need from an extractor.

    Attributes:
        name: ``'farl'``, ``'clip'``, ``'arcface'`` (or a custom name).
        dim: feature width.

    Optionally (the built-in extractors have them): ``preprocessing`` (the id of what
    ``__call__`` does to the images, recorded in bank manifests), ``preprocessings`` (the ids
    it can do), ``legacy_preprocessing`` (the id implied for banks that recorded none) and
    ``with_preprocessing(id)`` (the same network with another preprocessing).

    Shape:
        ``__call__``: images ``[B, 3, H, W]`` in [-1, 1] (any size) -> ``[B, dim]`` float32,
        L2-normalised, on the images' device.
    """

    name: str
    dim: int

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...


# ----------------------------------------------------------------------------- fingerprints


def module_fingerprint(module: nn.Module, *extra: Any) -> str:
    """sha256 of a module's state dict (names, dtypes, shapes, bytes) and ``extra`` values.

    Deterministic across devices; hashes every byte of the weights once (cost linear in their size).
    """
    h = hashlib.sha256()
    for item in extra:
        h.update(repr(item).encode() + b"\0")
    for key, t in sorted(module.state_dict().items()):
        t = t.detach().to("cpu").contiguous().reshape(-1)
        h.update(f"{key}|{t.dtype}|{t.numel()}\0".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def extractor_fingerprint(extractor: Any) -> str | None:
    """An extractor's ``fingerprint`` (computed once and cached), or None if it has none."""
    fp = getattr(extractor, "fingerprint", None)
    return fp() if callable(fp) else fp


class _Base:
    """Common part: a frozen network, one preprocessing function, no-grad batched calls, cached fingerprint."""

    name: str = ""
    dim: int = 0
    source: str = ""
    #: The id of what :meth:`preprocess` does now (recorded in bank manifests).
    preprocessing: str = ""

    def __init__(self, net: nn.Module) -> None:
        self.net = net.eval().requires_grad_(False)
        self._fingerprint: str | None = None

    @property
    def preprocessings(self) -> tuple[str, ...]:
        """The preprocessing ids this extractor can apply (its default first)."""
        return (self.preprocessing,)

    @property
    def legacy_preprocessing(self) -> str:
        """The id implied for banks whose manifest records none (built before it was recorded)."""
        return self.preprocessings[-1]

    def with_preprocessing(self, preprocessing: str) -> _Base:
        """This extractor (same network, shared) with ``preprocessing``; ``self`` if it already has it.

        Raises:
            InputError: an id this extractor cannot apply (the message lists the ones it can).
        """
        if preprocessing == self.preprocessing:
            return self
        if preprocessing not in self.preprocessings:
            raise InputError(f"preprocessing: the {self.name!r} extractor applies "
                             f"{', '.join(map(repr, self.preprocessings))}, got {preprocessing!r}")
        other = copy.copy(self)
        other.preprocessing = preprocessing
        other._fingerprint = None
        return other

    @property
    def device(self) -> torch.device:
        p = next(self.net.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    def to(self, device: str | torch.device) -> _Base:
        self.net.to(device)
        return self

    def fingerprint(self) -> str:
        """sha256 of the weights plus the preprocessing settings (cached)."""
        if self._fingerprint is None:
            self._fingerprint = module_fingerprint(self.net, self.name, self.dim, self._settings())
        return self._fingerprint

    def _settings(self) -> dict:
        return {}

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """Faces in [-1, 1] -> the network's input, as named by :attr:`preprocessing`."""
        raise NotImplementedError

    def _embed(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        _check_images(images)
        with torch.no_grad():
            f = self._embed(images.to(self.device, torch.float32))
        return F.normalize(f.float(), dim=-1)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, dim={self.dim}, source={self.source!r}, "
                f"preprocessing={self.preprocessing!r})")


class FarlExtractor(_Base):
    """FaRL pooled image embedding (the paper's pairing space).

    Args:
        encoder: a :class:`falco.models.farl.FaRLEncoder` (shared with the attribute loss, whose
            input convention this class never changes).
        source: where the weights came from (file name), for manifests.
        preprocessing: ``'clip-R-[0,1]'`` (default; R = the encoder's resolution, 224 for FaRL)
            or ``'farl-R-[-1,1]'`` (the attribute loss's input: banks built before the
            preprocessing was recorded); see the module notes.
    """

    name = "farl"

    def __init__(self, encoder: nn.Module, source: str = "", *, preprocessing: str | None = None) -> None:
        super().__init__(encoder)
        self.dim = int(encoder.output_dim)
        self.source = source
        r = int(encoder.image_resolution)
        self._ids = (f"clip-{r}-[0,1]", f"farl-{r}-[-1,1]")
        self.preprocessing = self._ids[0]
        if preprocessing is not None:
            if preprocessing not in self._ids:
                raise InputError(f"preprocessing: the 'farl' extractor applies {', '.join(map(repr, self._ids))}, "
                                 f"got {preprocessing!r}")
            self.preprocessing = preprocessing

    @property
    def preprocessings(self) -> tuple[str, ...]:
        return self._ids

    def _settings(self) -> dict:
        if self.preprocessing == self._ids[1]:  # exactly what banks of that time hashed
            return {"normalize": bool(self.net.normalize), "input": "resize-short-224-centre-crop"}
        return {"preprocessing": self.preprocessing,
                "input": "[0,1]-bilinear-antialias-short-R-centre-crop-clip-mean-std"}

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Faces in [-1, 1] -> FaRL's input under :attr:`preprocessing`.

        Shape:
            ``[B, 3, H, W]`` -> ``[B, 3, R, R]`` (R = 224 for FaRL).
        """
        if self.preprocessing == self._ids[1]:
            return self.net.preprocess(x)  # the attribute loss's own input convention
        dtype = self.net.visual.conv1.weight.dtype
        return clip_input(x, int(self.net.image_resolution), "bilinear").to(dtype)

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.pool(self.net.encode_tokens(self.preprocess(x)))


class ArcFaceExtractor(_Base):
    """ArcFace identity embedding (the identity loss's network and crop).

    Preprocessing ``'arcface-256-crop-112-[-1,1]'``: the face in [-1, 1] (IR-SE50's training
    range), brought to 256 px, cropped to ``[35:223, 32:220]`` and average-pooled to 112
    (:meth:`falco.models.arcface.IdentityEncoder.crop`).

    Args:
        encoder: a :class:`falco.models.arcface.IdentityEncoder`.
        source: where the weights came from, for manifests.
    """

    name = "arcface"
    preprocessing = "arcface-256-crop-112-[-1,1]"

    def __init__(self, encoder: nn.Module, source: str = "") -> None:
        super().__init__(encoder)
        self.dim = int(getattr(encoder, "embedding_dim", 512))
        self.source = source

    def _settings(self) -> dict:
        return {"input": "resize-256-crop-35:223,32:220-pool-112"}

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Faces in [-1, 1] -> the 112-px identity crop. Shape: ``[B, 3, H, W]`` -> ``[B, 3, 112, 112]``."""
        return self.net.crop(x)

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.facenet(self.preprocess(x))


class ClipExtractor(_Base):
    """CLIP image embedding of an open_clip visual tower, with CLIP's own preprocessing
    (``'clip-224-[0,1]-bicubic'``: :func:`clip_input` with bicubic resizing).

    Args:
        visual: an open_clip visual tower (``model.visual``) returning ``[B, dim]``.
        image_size: its input resolution (224 for ViT-B/16).
        source: where the weights came from, for manifests.
        name: recorded name (default ``'clip'``).
    """

    def __init__(self, visual: nn.Module, *, image_size: int = 224, source: str = "",
                 name: str = "clip") -> None:
        super().__init__(visual)
        self.name = name
        self.image_size = int(image_size)
        self.source = source
        self.preprocessing = f"clip-{self.image_size}-[0,1]-bicubic"
        with torch.no_grad():
            probe = next(visual.parameters())
            out = visual(torch.zeros(1, 3, self.image_size, self.image_size, device=probe.device,
                                     dtype=probe.dtype))
        self.dim = int(out.shape[-1])

    def _settings(self) -> dict:
        return {"input": f"[0,1]-bicubic-short-{self.image_size}-centre-crop-clip-mean-std"}

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """[-1, 1] -> CLIP input: [0, 1], short side bicubic to ``image_size``, centre crop, mean/std.

        Shape:
            ``[B, 3, H, W]`` -> ``[B, 3, S, S]``.
        """
        return clip_input(x, self.image_size, "bicubic")

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        p = next(self.net.parameters())
        return self.net(self.preprocess(x).to(p.dtype))


def clip_input(x: torch.Tensor, size: int, interpolation: str = "bilinear") -> torch.Tensor:
    """Faces in [-1, 1] -> CLIP's input convention: [0, 1], short side resized to ``size``
    (antialiased; torchvision ``Resize(size)`` geometry), centre crop, CLIP mean/std.

    The one preprocessing function of the ``'clip-*'`` ids: FaRL's pairing embedding uses
    ``interpolation='bilinear'`` (the reference FALCO's ``Resize(224, antialias=True)``), the
    CLIP extractor ``'bicubic'`` (CLIP's own).

    Shape:
        ``[B, 3, H, W]`` -> ``[B, 3, size, size]``.
    """
    x = (x + 1.0) * 0.5
    h, w = x.shape[-2:]
    short, long = (h, w) if h <= w else (w, h)
    new_short, new_long = size, int(size * long / short)
    nh, nw = (new_short, new_long) if h <= w else (new_long, new_short)
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode=interpolation, align_corners=False, antialias=True)
    top, left = round((nh - size) / 2.0), round((nw - size) / 2.0)
    x = x[:, :, top:top + size, left:left + size]
    mean = torch.tensor(CLIP_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


# ----------------------------------------------------------------------------- loading


def load_extractor(kind: str = "farl", models: str | os.PathLike | None = None,
                   device: str | torch.device = "cpu", *, preprocessing: str | None = None) -> FeatureExtractor:
    """Load a feature extractor from the model set.

    Args:
        kind: ``'farl'`` (model set role ``attributes``), ``'clip'`` (OpenAI CLIP ViT-B/16,
            local weights only, see :data:`CLIP_FILES`) or ``'arcface'`` (role ``identity``).
        models: model set directory (default ``$FALCO_HOME/models``).
        device: where to put the network.
        preprocessing: a preprocessing id (see the module notes); default: the extractor's own
            (for FaRL ``'clip-224-[0,1]'``).

    Raises:
        InputError: unknown ``kind`` or a preprocessing it cannot apply.
        ModelNotFoundError: the weights are not installed (the message says where to put them).
    """
    ex = _load_extractor(kind, models, device)
    return ex if preprocessing is None else ex.with_preprocessing(preprocessing)


def _load_extractor(kind: str, models: str | os.PathLike | None, device: str | torch.device) -> _Base:
    from falco.models.zoo import load_role
    from falco.pretrained.modelset import resolve_model

    if kind not in EXTRACTORS:
        raise InputError(f"--features must be one of {', '.join(EXTRACTORS)}, got {kind!r}")
    if kind == "farl":
        path = resolve_model("attributes", models)
        return FarlExtractor(load_role("attributes", models, device), source=path.name)
    if kind == "arcface":
        path = resolve_model("identity", models)
        return ArcFaceExtractor(load_role("identity", models, device), source=path.name)
    return _load_clip(models, device)


def _find_clip_weights(models: str | os.PathLike | None) -> tuple[Path | None, list[str]]:
    from falco.pretrained.modelset import models_dir

    root = models_dir(models)
    looked = [str(root / name) for name in CLIP_FILES]
    for name in CLIP_FILES:
        if (root / name).is_file():
            return root / name, looked
    looked.append(f"Hugging Face cache {CLIP_HF_REPO}")
    try:
        from huggingface_hub import try_to_load_from_cache

        for name in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
            hit = try_to_load_from_cache(CLIP_HF_REPO, name)
            if isinstance(hit, str) and Path(hit).is_file():
                return Path(hit), looked
    except (ImportError, OSError, ValueError):  # no huggingface_hub, unreadable cache: nothing there
        return None, looked
    return None, looked


def _load_clip(models: str | os.PathLike | None, device: str | torch.device) -> ClipExtractor:
    path, looked = _find_clip_weights(models)
    if path is None:
        raise ModelNotFoundError(
            "CLIP ViT-B/16 weights not found (looked in " + ", ".join(looked) + "); download "
            f"open_clip_model.safetensors from https://huggingface.co/{CLIP_HF_REPO} into the model set "
            "directory, or use --features farl (OpenAI's TorchScript ViT-B-16.pt is not accepted)"
        )
    import open_clip

    from falco.models._checkpoint import load_checkpoint, strip_prefix, unwrap_state_dict
    from falco.models.farl import _quiet_open_clip

    sd = unwrap_state_dict(load_checkpoint(path), path)  # weights_only / safetensors: no code runs
    sd = {str(k).removeprefix("module."): v for k, v in sd.items()}
    visual_sd = strip_prefix(sd, "visual.")
    if not visual_sd:
        raise CheckpointError(path, "no 'visual.*' keys: not an open_clip / OpenAI-CLIP checkpoint")
    with _quiet_open_clip():
        model = open_clip.create_model("ViT-B-16-quickgelu", pretrained=None, precision="fp32")
    try:
        model.visual.load_state_dict(visual_sd, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(path, f"not a CLIP ViT-B/16 visual tower: {str(exc).splitlines()[0]}") from exc
    return ClipExtractor(model.visual.to(device), image_size=224, source=path.name)


# ----------------------------------------------------------------------------- embedding


def _check_images(images: Any) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise InputError(f"images: expected a [B, 3, H, W] tensor in [-1, 1], got {shape}")
    if images.shape[0] < 1 or not images.is_floating_point():
        raise InputError(f"images: expected a non-empty float tensor, got {images.dtype} {tuple(images.shape)}")


def embed(extractor: FeatureExtractor, images: torch.Tensor, *, batch_size: int = 32) -> np.ndarray:
    """Features of images in [-1, 1], batched, as a float32 numpy array.

    Shape:
        images ``[N, 3, H, W]`` -> ``[N, dim]``.
    """
    _check_images(images)
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    out = [extractor(images[s:s + batch_size]).detach().float().cpu() for s in range(0, len(images), batch_size)]
    return torch.cat(out).numpy()


def embed_faces(extractor: FeatureExtractor, faces: np.ndarray, *, size: int = 256, batch_size: int = 32,
                device: str | torch.device | None = None, preprocessing: str | None = None) -> np.ndarray:
    """Features of aligned real faces (uint8 RGB crops), the way bank fakes are embedded.

    Args:
        extractor: the bank's extractor (its own preprocessing, unless ``preprocessing`` is given:
            pass the bank's, :meth:`falco.bank.Bank.query_extractor` does).
        faces: aligned crops, uint8 ``[N, H, W, 3]`` (or one ``[H, W, 3]``); resized to
            ``size`` (256, the size fakes are pooled to) when they are another size.
        size: the aligned face size the bank's fakes were embedded at.
        batch_size: faces per forward pass.
        device: where to run (default: the extractor's device, else CPU).
        preprocessing: a preprocessing id the extractor can apply (see the module notes).

    Shape:
        faces ``[N, H, W, 3]`` -> ``[N, dim]`` float32, L2-normalised.
    """
    from falco.latent.images import to_tensor

    if preprocessing is not None and preprocessing != getattr(extractor, "preprocessing", None):
        extractor = extractor.with_preprocessing(preprocessing)
    faces = np.asarray(faces)
    if faces.ndim == 3:
        faces = faces[None]
    if device is None:
        device = getattr(extractor, "device", "cpu")
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    out = []
    for s in range(0, len(faces), batch_size):
        x = to_tensor(faces[s:s + batch_size], size=size, device=device)
        out.append(extractor(x).detach().float().cpu())
    if not out:
        raise InputError("faces: expected at least one face, got 0")
    return torch.cat(out).numpy()
