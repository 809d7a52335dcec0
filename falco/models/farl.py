"""FaRL's visual tower (CLIP ViT with QuickGELU) through open_clip, for FALCO's attribute loss.

FaRL (``FaRL-Base-Patch16-LAIONFace20M-ep16.pth`` / ``-ep64.pth``) is a CLIP ViT-B/16 trained on
LAION-Face. Its checkpoints hold OpenAI-CLIP key names under ``state_dict`` (visual and text
tower). :func:`load_farl` keeps only the visual tower, infers its size from tensor shapes and
returns a frozen :class:`FaRLEncoder`.

Input convention. By default the encoder feeds images exactly like the reference FALCO code
(chi0tzp/FALCO ``lib/attr_loss.py``): the face in [-1, 1], resized so that its short side is the
model resolution (224) with antialiased bilinear interpolation, centre-cropped, and **no** CLIP
mean/std normalisation (torchvision ``Resize(224, antialias=True)`` + ``CenterCrop(224)``, which
:meth:`FaRLEncoder.preprocess` reproduces with ``F.interpolate``). ``normalize=True`` instead
maps [-1, 1] to [0, 1] and applies CLIP's mean/std, the preprocessing FaRL was trained with.
The reference attribute loss (and so the paper's numbers) used the un-normalised input.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from falco.errors import CheckpointError, InputError
from falco.models._checkpoint import load_checkpoint, source_name

log = logging.getLogger(__name__)

Source = str | Path | Mapping[str, Any]

#: CLIP's image normalisation (OpenAI), used by FaRL during training; applied only with normalize=True.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

#: The open_clip model whose visual tower is FaRL-Base-Patch16 (CLIP ViT-B/16, QuickGELU).
OPEN_CLIP_NAME = "ViT-B-16-quickgelu"

_RESBLOCK = re.compile(r"visual\.transformer\.resblocks\.(\d+)\.")


@dataclass(frozen=True)
class FaRLConfig:
    """Size of a CLIP ViT visual tower, as inferred from a state dict."""

    width: int = 768
    layers: int = 12
    heads: int = 12
    patch_size: int = 16
    image_resolution: int = 224
    output_dim: int = 512
    mlp_ratio: float = 4.0

    @property
    def num_tokens(self) -> int:
        """Class token plus one token per patch (197 for ViT-B/16 at 224 px)."""
        return (self.image_resolution // self.patch_size) ** 2 + 1

    @property
    def is_vit_b16(self) -> bool:
        """Whether this is exactly open_clip's ``ViT-B-16-quickgelu`` visual tower."""
        return self == FaRLConfig()


class FaRLEncoder(nn.Module):
    """Frozen FaRL visual tower: tokens for the attribute loss, pooled features for pairing.

    Args:
        visual: an open_clip ``VisionTransformer`` (QuickGELU) with FaRL weights loaded.
        normalize: apply CLIP mean/std after mapping [-1, 1] to [0, 1] (FaRL's training
            preprocessing). ``False`` (default) follows the reference FALCO code: no mean/std.
        config: the tower's size; inferred from ``visual`` when omitted.
        ignored_keys: checkpoint keys that were not loaded (text tower, extras), for reporting.

    Shape:
        input ``[B, 3, H, W]`` in [-1, 1]; ``tokens`` ``[B, N, width]`` (N = 197 for ViT-B/16),
        ``pooled`` / ``features`` ``[B, output_dim]``.
    """

    def __init__(
        self,
        visual: nn.Module,
        *,
        normalize: bool = False,
        config: FaRLConfig | None = None,
        ignored_keys: tuple[str, ...] = (),
    ) -> None:
        super().__init__()
        self.visual = visual
        self.normalize = bool(normalize)
        self.config = config if config is not None else _config_from_module(visual)
        self.ignored_keys = tuple(ignored_keys)
        self.register_buffer("clip_mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("clip_std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    @property
    def image_resolution(self) -> int:
        return self.config.image_resolution

    @property
    def width(self) -> int:
        return self.config.width

    @property
    def output_dim(self) -> int:
        return self.config.output_dim

    @property
    def num_tokens(self) -> int:
        return self.config.num_tokens

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Resize (short side, antialiased bilinear) and centre-crop to the model resolution.

        Mirrors torchvision ``Resize(R, antialias=True)`` + ``CenterCrop(R)`` on tensors, as the
        reference FALCO attribute loss does; then CLIP mean/std only if ``normalize``.

        Shape:
            ``[B, 3, H, W]`` -> ``[B, 3, R, R]`` (R = 224 for FaRL).
        """
        _check_image(x, "x")
        dtype = self.visual.conv1.weight.dtype
        x = x.to(dtype)
        size = self.config.image_resolution
        h, w = x.shape[-2:]
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = size, int(size * long / short)
        new_h, new_w = (new_long, new_short) if w <= h else (new_short, new_long)
        if (new_h, new_w) != (h, w):
            x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True)
        top = round((new_h - size) / 2.0)
        left = round((new_w - size) / 2.0)
        x = x[:, :, top : top + size, left : left + size]
        if self.normalize:
            x = ((x + 1.0) * 0.5 - self.clip_mean.to(dtype)) / self.clip_std.to(dtype)
        return x

    def encode_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens of an already preprocessed batch (no resize, no normalisation).

        Shape:
            ``[B, 3, R, R]`` -> ``[B, N, width]``.
        """
        v = self.visual
        x = v.conv1(x)  # [B, width, g, g]
        x = x.flatten(2).transpose(1, 2)  # [B, g*g, width]
        cls = v.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype)
        x = v.patch_dropout(x)
        x = v.ln_pre(x)
        if hasattr(v.transformer, "batch_first"):
            # open_clip >= 2.26: the Transformer takes [B, N, D] and handles its own layout.
            return v.transformer(x)
        return v.transformer(x.transpose(0, 1)).transpose(0, 1)  # older open_clip: [N, B, D]

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """All tokens after the visual transformer, before ``ln_post`` (differentiable in ``x``).

        Shape:
            ``[B, 3, H, W]`` in [-1, 1] -> ``[B, N, width]`` (``[B, 197, 768]`` for FaRL).
        """
        return self.encode_tokens(self.preprocess(x))

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """``ln_post(class token) @ proj``: CLIP's image embedding from the tokens.

        Shape:
            ``[B, N, width]`` -> ``[B, output_dim]``.
        """
        return self.visual.ln_post(tokens[:, 0]) @ self.visual.proj

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """CLIP image embedding (not normalised).

        Shape:
            ``[B, 3, H, W]`` in [-1, 1] -> ``[B, output_dim]``.
        """
        return self.pool(self.tokens(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """L2-normalised pooled embedding (for nearest-neighbour search).

        Shape:
            ``[B, 3, H, W]`` in [-1, 1] -> ``[B, output_dim]``.
        """
        return F.normalize(self.pooled(x), dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Same as :meth:`tokens`.

        Shape:
            ``[B, 3, H, W]`` -> ``[B, N, width]``.
        """
        return self.tokens(x)

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"width={c.width}, layers={c.layers}, heads={c.heads}, patch_size={c.patch_size}, "
            f"image_resolution={c.image_resolution}, output_dim={c.output_dim}, normalize={self.normalize}"
        )


# --------------------------------------------------------------------------------------------
# Building and loading
# --------------------------------------------------------------------------------------------


def build_visual(config: FaRLConfig, *, use_named_model: bool | None = None, init_weights: bool = True) -> nn.Module:
    """Build an fp32 open_clip ``VisionTransformer`` with QuickGELU of the given size.

    The FaRL-Base size is built through ``open_clip.create_model('ViT-B-16-quickgelu')``
    (fp32, no download) and its text tower dropped; other sizes (tests, tiny model sets) build
    the same ``VisionTransformer`` class directly. ``use_named_model`` forces either path.
    ``init_weights=False`` builds on the meta device and allocates uninitialised CPU memory
    (fast: for callers that load every tensor right after, like :func:`load_farl`).
    """
    if config.width % config.heads:
        raise InputError(f"heads: {config.heads} does not divide width {config.width}")
    if use_named_model is None:
        use_named_model = config.is_vit_b16
    if use_named_model and not config.is_vit_b16:
        raise InputError(f"config: {config} is not the {OPEN_CLIP_NAME} visual tower")
    device = "cpu" if init_weights else "meta"
    with torch.device(device):
        visual = _build(config, use_named_model, device)
    if not init_weights:
        visual = visual.to_empty(device="cpu")
        assert {n for n, _ in visual.named_buffers()} <= set(visual.state_dict()), "unloadable buffers"
    return visual.float().eval()


def _build(config: FaRLConfig, use_named_model: bool, device: str) -> nn.Module:
    import open_clip
    from open_clip.transformer import LayerNorm, QuickGELU, VisionTransformer

    if use_named_model:
        with _quiet_open_clip():
            clip = open_clip.create_model(OPEN_CLIP_NAME, pretrained=None, precision="fp32", device=device)
        return clip.visual  # the text tower goes with ``clip``
    return VisionTransformer(
        image_size=config.image_resolution,
        patch_size=config.patch_size,
        width=config.width,
        layers=config.layers,
        heads=config.heads,
        mlp_ratio=config.mlp_ratio,
        output_dim=config.output_dim,
        act_layer=QuickGELU,
        norm_layer=LayerNorm,
    )


def infer_config(sd: Mapping[str, Any], *, heads: int | None = None, source: object = "<state dict>") -> FaRLConfig:
    """Infer a :class:`FaRLConfig` from OpenAI-CLIP visual tensor shapes.

    ``heads`` is not stored in a checkpoint; CLIP's rule ``width // 64`` (at least 1) is used
    unless given.
    """
    needed = ("visual.conv1.weight", "visual.positional_embedding", "visual.proj")
    missing = [k for k in needed if not isinstance(sd.get(k), torch.Tensor)]
    if missing:
        raise CheckpointError(source, f"not a CLIP ViT visual tower: missing {', '.join(missing)}")
    conv = sd["visual.conv1.weight"]
    pos = sd["visual.positional_embedding"]
    proj = sd["visual.proj"]
    if conv.ndim != 4 or conv.shape[1] != 3 or conv.shape[2] != conv.shape[3]:
        raise CheckpointError(source, f"visual.conv1.weight has shape {tuple(conv.shape)}, expected [width, 3, p, p]")
    width, patch = int(conv.shape[0]), int(conv.shape[2])
    grid = math.isqrt(int(pos.shape[0]) - 1) if pos.ndim == 2 and pos.shape[0] > 1 else 0
    if pos.ndim != 2 or grid * grid + 1 != pos.shape[0] or pos.shape[1] != width:
        raise CheckpointError(
            source, f"visual.positional_embedding has shape {tuple(pos.shape)}, expected [g*g + 1, {width}]"
        )
    if proj.ndim != 2 or proj.shape[0] != width:
        raise CheckpointError(source, f"visual.proj has shape {tuple(proj.shape)}, expected [{width}, output_dim]")
    blocks = {int(m.group(1)) for k in sd if (m := _RESBLOCK.match(k))}
    if not blocks:
        raise CheckpointError(source, "no visual.transformer.resblocks.N tensors")
    layers = max(blocks) + 1
    fc = sd.get("visual.transformer.resblocks.0.mlp.c_fc.weight")
    mlp_ratio = float(fc.shape[0]) / width if isinstance(fc, torch.Tensor) and fc.ndim == 2 else 4.0
    heads = heads if heads is not None else max(1, width // 64)
    if heads < 1 or width % heads:
        raise CheckpointError(source, f"width {width} is not divisible into {heads} attention heads")
    return FaRLConfig(
        width=width,
        layers=layers,
        heads=heads,
        patch_size=patch,
        image_resolution=grid * patch,
        output_dim=int(proj.shape[1]),
        mlp_ratio=mlp_ratio,
    )


def load_farl(
    source: Source,
    *,
    normalize: bool = False,
    heads: int | None = None,
    device: torch.device | str | None = None,
) -> FaRLEncoder:
    """Load FaRL (or any OpenAI-layout CLIP ViT) and return its frozen visual tower.

    Args:
        source: a checkpoint path (read by :func:`falco.models._checkpoint.load_checkpoint`:
            ``torch.load(weights_only=True)`` or safetensors), a full FaRL checkpoint dict
            (tensors under ``state_dict``), or a bare OpenAI-CLIP state dict.
        normalize: see :class:`FaRLEncoder` (default: reference FALCO input, no mean/std).
        heads: attention heads, if not CLIP's ``width // 64``.
        device: where to put the model (default CPU).

    Raises:
        CheckpointError: unreadable file, not a CLIP ViT, missing visual keys (named), or a
            tensor of the wrong shape.

    The text tower and any other non-visual keys are ignored; they are listed in
    ``ignored_keys`` and logged.
    """
    name = source_name(source)
    sd = _state_dict(load_checkpoint(source), name)
    config = infer_config(sd, heads=heads, source=name)
    visual = build_visual(config, init_weights=False)  # every tensor is loaded below

    expected = {f"visual.{k}": v for k, v in visual.state_dict().items()}
    missing = sorted(k for k in expected if not isinstance(sd.get(k), torch.Tensor))
    if missing:
        shown = ", ".join(missing[:8]) + (f" (+{len(missing) - 8} more)" if len(missing) > 8 else "")
        raise CheckpointError(name, f"missing {len(missing)} visual key(s): {shown}")
    for k, ref in expected.items():
        if tuple(sd[k].shape) != tuple(ref.shape):
            raise CheckpointError(name, f"{k} has shape {tuple(sd[k].shape)}, expected {tuple(ref.shape)}")
    ignored = tuple(sorted(str(k) for k in sd if k not in expected))
    with torch.no_grad():
        visual.load_state_dict({k[len("visual.") :]: sd[k] for k in expected}, strict=True)
    _report_ignored(ignored, name)

    encoder = FaRLEncoder(visual, normalize=normalize, config=config, ignored_keys=ignored)
    return encoder.to(device) if device is not None else encoder


def tiny_farl_state_dict(
    *,
    width: int = 64,
    layers: int = 2,
    heads: int | None = None,
    patch_size: int = 8,
    image_resolution: int = 32,
    output_dim: int = 32,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """A small random CLIP ViT state dict in OpenAI-CLIP key layout, which :func:`load_farl` accepts.

    Visual tower keys in full plus a few text tower keys (``positional_embedding``,
    ``text_projection``, ``logit_scale``, ``token_embedding.weight``, ``ln_final.*``) so the
    loader's "text tower ignored" path is exercised. Wrap as ``{'state_dict': sd}`` to get
    the real FaRL file format.

    ``heads`` is not stored in the OpenAI layout: the loader infers ``max(1, width // 64)``,
    so a ``heads`` given here must equal that (it is only checked).
    """
    inferred_heads = max(1, width // 64)
    if heads is not None and heads != inferred_heads:
        raise InputError(
            f"heads: {heads} cannot be stored in an OpenAI-CLIP state dict; load_farl infers "
            f"max(1, width // 64) = {inferred_heads} (pass heads= to load_farl instead)"
        )
    if image_resolution % patch_size or width < 1 or layers < 1 or output_dim < 1:
        raise InputError(
            f"tiny_farl_state_dict: bad size (width={width}, layers={layers}, patch_size={patch_size}, "
            f"image_resolution={image_resolution}, output_dim={output_dim})"
        )
    g = torch.Generator().manual_seed(seed)

    def randn(*shape: int, std: float) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * std

    def ln(prefix: str, dim: int) -> dict[str, torch.Tensor]:
        return {f"{prefix}.weight": 1.0 + randn(dim, std=0.05), f"{prefix}.bias": randn(dim, std=0.02)}

    grid = image_resolution // patch_size
    hidden = 4 * width
    sd: dict[str, torch.Tensor] = {
        "visual.class_embedding": randn(width, std=width**-0.5),
        "visual.positional_embedding": randn(grid * grid + 1, width, std=width**-0.5),
        "visual.proj": randn(width, output_dim, std=width**-0.5),
        "visual.conv1.weight": randn(width, 3, patch_size, patch_size, std=(3 * patch_size * patch_size) ** -0.5),
        **ln("visual.ln_pre", width),
    }
    for i in range(layers):
        p = f"visual.transformer.resblocks.{i}"
        sd.update(
            {
                f"{p}.attn.in_proj_weight": randn(3 * width, width, std=width**-0.5),
                f"{p}.attn.in_proj_bias": randn(3 * width, std=0.02),
                f"{p}.attn.out_proj.weight": randn(width, width, std=width**-0.5),
                f"{p}.attn.out_proj.bias": randn(width, std=0.02),
                **ln(f"{p}.ln_1", width),
                f"{p}.mlp.c_fc.weight": randn(hidden, width, std=width**-0.5),
                f"{p}.mlp.c_fc.bias": randn(hidden, std=0.02),
                f"{p}.mlp.c_proj.weight": randn(width, hidden, std=hidden**-0.5),
                f"{p}.mlp.c_proj.bias": randn(width, std=0.02),
                **ln(f"{p}.ln_2", width),
            }
        )
    sd.update(ln("visual.ln_post", width))
    text_width, context = 32, 8
    sd.update(
        {
            "positional_embedding": randn(context, text_width, std=0.01),
            "text_projection": randn(text_width, output_dim, std=text_width**-0.5),
            "logit_scale": torch.tensor(math.log(1 / 0.07)),
            "token_embedding.weight": randn(16, text_width, std=0.02),
            **ln("ln_final", text_width),
        }
    )
    return sd


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _check_image(x: Any, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{name}: expected a torch.Tensor [B, 3, H, W], got {type(x).__name__}")
    if x.ndim != 4 or x.shape[1] != 3 or x.shape[0] < 1 or min(x.shape[-2:]) < 1:
        raise InputError(f"{name}: expected shape [B, 3, H, W], got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise InputError(f"{name}: expected a floating point tensor in [-1, 1], got dtype {x.dtype}")


def _state_dict(raw: Any, source: object) -> Mapping[str, Any]:
    if not isinstance(raw, Mapping):
        raise CheckpointError(source, f"expected a dict, got {type(raw).__name__}")
    if isinstance(raw.get("state_dict"), Mapping):
        raw = raw["state_dict"]
    if not any(isinstance(k, str) and k.startswith("visual.") for k in raw):
        raise CheckpointError(source, "no 'visual.*' keys: not an OpenAI-CLIP / FaRL state dict")
    return raw


def _report_ignored(ignored: tuple[str, ...], source: object) -> None:
    if not ignored:
        return
    visual_extra = [k for k in ignored if k.startswith("visual.")]
    if visual_extra:
        log.warning(
            "%s: ignoring %d unexpected visual key(s): %s", source, len(visual_extra), ", ".join(visual_extra[:8])
        )
    log.info("%s: ignored %d non-visual key(s) (text tower etc.)", source, len(ignored) - len(visual_extra))


def _config_from_module(visual: nn.Module) -> FaRLConfig:
    width, _, patch, _ = visual.conv1.weight.shape
    blocks = visual.transformer.resblocks
    return FaRLConfig(
        width=int(width),
        layers=len(blocks),
        heads=int(blocks[0].attn.num_heads),
        patch_size=int(patch),
        image_resolution=int(math.isqrt(visual.positional_embedding.shape[0] - 1) * patch),
        output_dim=int(visual.proj.shape[1]),
        mlp_ratio=float(blocks[0].mlp.c_fc.weight.shape[0]) / int(width),
    )


class _DropNoPretrainedWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()


@contextlib.contextmanager
def _quiet_open_clip() -> Iterator[None]:
    """Silence open_clip's expected "no pretrained weights" warning while we build the model."""
    flt = _DropNoPretrainedWarning()
    root = logging.getLogger()
    root.addFilter(flt)
    try:
        yield
    finally:
        root.removeFilter(flt)
