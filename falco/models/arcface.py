"""ArcFace identity encoder: TreB1eN's IR-SE50 backbone (``model_ir_se50.pth``) as used by FALCO, pSp, e4e.

:class:`Backbone` has TreB1eN's exact state-dict layout (``input_layer``, ``body.N``,
``output_layer.{0,3,4}``): BatchNorm2d, Dropout, Flatten, ``Linear(512*7*7, 512)``,
BatchNorm1d, then L2 normalisation. :class:`IdentityEncoder` wraps it with the crop of the
identity losses of pSp/e4e/FALCO (``IDLoss.extract_feats``): on a 256-px aligned face in
[-1, 1], ``x[:, :, 35:223, 32:220]`` then ``AdaptiveAvgPool2d((112, 112))``.

Inputs that are not 256 px are first brought to 256 px the way FALCO's ``IDLoss.id_transform``
does (``Resize(256, antialias=True)`` of the shorter side, then ``CenterCrop(256)``), so the
crop always lands on the same part of an aligned face.

An insightface ``iresnet`` backbone (``backbone.pth`` of ``arcface_torch``) is supported
behind the same interface (:class:`IResNet`); :func:`load_arcface` recognises its keys.
Note that insightface models were trained on their own 5-point alignment, not on the FFHQ
alignment, so the crop above is only an approximation for them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from falco.errors import CheckpointError, InputError
from falco.models import _checkpoint as ckpt_io
from falco.models.irse import (DEFAULT_WIDTHS, SE_REDUCTION, TINY_UNITS, TINY_WIDTHS, Mode, add_trunk, infer_body,
                               l2_norm)

#: The crop of the identity loss on a 256-px aligned face: rows 35:223, columns 32:220.
CROP_ROWS = (35, 223)
CROP_COLS = (32, 220)
FACE_SIZE = 256
EMBED_SIZE = 112


class Backbone(nn.Module):
    """TreB1eN IR / IR-SE backbone (``Backbone(input_size, num_layers, mode)``), L2-normalised output.

    Args:
        num_layers: 50, 100, 152, or 4 stage lengths (tiny test nets).
        mode: ``'ir_se'`` (ArcFace of FALCO/pSp/e4e) or ``'ir'``.
        widths: Output channels of the 4 stages (stem = ``widths[0]``).
        input_size: 112 or 224 (sets the ``Linear`` input: ``widths[3] * (input_size/16)**2``).
        embedding_dim: Size of the embedding (512).
        drop_ratio: Dropout before the linear layer (inactive in eval mode).
        affine: Whether the final BatchNorm1d has weight/bias (True in ``model_ir_se50.pth``).
        se_reduction: Squeeze-excitation reduction (16).

    Shape:
        ``[B, 3, input_size, input_size]`` in [-1, 1] -> ``[B, embedding_dim]``, unit norm.
    """

    def __init__(
        self,
        num_layers: int | Sequence[int] = 50,
        mode: Mode = "ir_se",
        *,
        widths: Sequence[int] = DEFAULT_WIDTHS,
        input_size: int = EMBED_SIZE,
        embedding_dim: int = 512,
        drop_ratio: float = 0.6,
        affine: bool = True,
        se_reduction: int = SE_REDUCTION,
    ) -> None:
        super().__init__()
        if input_size not in (112, 224):
            raise InputError(f"input_size must be 112 or 224, got {input_size}")
        add_trunk(self, num_layers, mode, widths, se_reduction)
        self.input_size = input_size
        self.embedding_dim = embedding_dim
        spatial = input_size // 16
        self.output_layer = nn.Sequential(
            nn.BatchNorm2d(self.widths[3]),
            nn.Dropout(drop_ratio),
            nn.Flatten(),
            nn.Linear(self.widths[3] * spatial * spatial, embedding_dim),
            nn.BatchNorm1d(embedding_dim, affine=affine),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return l2_norm(self.output_layer(self.body(self.input_layer(x))))


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, 1, bias=False)


class IBasicBlock(nn.Module):
    """insightface ``arcface_torch`` residual block (``bn1, conv1, bn2, prelu, conv2, bn3, downsample``).

    Shape:
        ``[B, inplanes, H, W]`` -> ``[B, planes, H / stride, W / stride]``.
    """

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-5)
        self.conv1 = _conv3x3(inplanes, planes)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-5)
        self.prelu = nn.PReLU(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-5)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes, eps=1e-5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + identity


#: Blocks per layer of insightface's ``iresnet{18,34,50,100,200}``.
IRESNET_LAYERS: dict[int, tuple[int, int, int, int]] = {
    18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 14, 3), 100: (3, 13, 30, 3), 200: (6, 26, 60, 6)}


class IResNet(nn.Module):
    """insightface ``iresnet`` (``arcface_torch/backbones/iresnet.py``), L2-normalised output.

    Keys: ``conv1, bn1, prelu, layer1..4, bn2, fc, features``.

    Args:
        layers: Blocks per layer (``IRESNET_LAYERS[50]`` ...).
        widths: Output channels of ``layer1..4`` (stem = ``widths[0]``).
        embedding_dim: Size of ``fc`` / ``features`` (512).

    Shape:
        ``[B, 3, 112, 112]`` in [-1, 1] -> ``[B, embedding_dim]``, unit norm.
    """

    def __init__(self, layers: Sequence[int] = IRESNET_LAYERS[50], *, widths: Sequence[int] = DEFAULT_WIDTHS,
                 embedding_dim: int = 512, dropout: float = 0.0) -> None:
        super().__init__()
        self.layers_spec = tuple(int(n) for n in layers)
        self.widths = tuple(widths)
        if len(self.layers_spec) != 4 or len(self.widths) != 4 or min(self.layers_spec) < 1:
            raise InputError(f"IResNet needs 4 positive layer lengths and 4 widths, got {list(layers)}, {list(widths)}")
        self.input_size = EMBED_SIZE
        self.embedding_dim = embedding_dim
        self.conv1 = nn.Conv2d(3, self.widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(self.widths[0], eps=1e-5)
        self.prelu = nn.PReLU(self.widths[0])
        inplanes = self.widths[0]
        for i, (n, planes) in enumerate(zip(self.layers_spec, self.widths, strict=True), start=1):
            blocks = [IBasicBlock(inplanes, planes, 2)] + [IBasicBlock(planes, planes, 1) for _ in range(n - 1)]
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
            inplanes = planes
        self.bn2 = nn.BatchNorm2d(inplanes, eps=1e-5)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(inplanes * 7 * 7, embedding_dim)
        self.features = nn.BatchNorm1d(embedding_dim, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.fc(self.dropout(torch.flatten(self.bn2(x), 1)))
        return l2_norm(self.features(x))


def resize_to_face(x: torch.Tensor, size: int = FACE_SIZE) -> torch.Tensor:
    """Bring faces to ``size`` px: shorter side resized (bilinear, antialiased), then centre-cropped.

    This is torchvision's ``Resize(size, antialias=True)`` + ``CenterCrop(size)``, FALCO's
    ``id_transform``. A ``size``-px square input is returned unchanged.

    Shape:
        ``[B, C, H, W]`` -> ``[B, C, size, size]``.
    """
    h, w = x.shape[-2:]
    if h == size and w == size:
        return x
    short, long = (h, w) if h <= w else (w, h)
    new_short, new_long = size, int(size * long / short)
    new_h, new_w = (new_short, new_long) if h <= w else (new_long, new_short)
    x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True)
    top = round((new_h - size) / 2.0)
    left = round((new_w - size) / 2.0)
    return x[..., top:top + size, left:left + size]


class IdentityEncoder(nn.Module):
    """Frozen ArcFace embedding of FFHQ-aligned faces, differentiable w.r.t. its input.

    ``forward`` takes 256-px aligned faces in [-1, 1] (other sizes: see :func:`resize_to_face`),
    crops ``x[:, :, 35:223, 32:220]``, average-pools to 112x112 and embeds. The backbone stays in
    eval mode (``train()`` does not switch its BatchNorm/Dropout) and its parameters do not
    require grad unless ``frozen=False``.

    Args:
        facenet: A :class:`Backbone` or :class:`IResNet` taking 112-px faces.
        frozen: Keep the backbone in eval mode with ``requires_grad=False``.

    Shape:
        ``[B, 3, H, W]`` in [-1, 1] -> ``[B, embedding_dim]``, unit norm.
    """

    def __init__(self, facenet: nn.Module, *, frozen: bool = True) -> None:
        super().__init__()
        self.facenet = facenet
        self.input_size = int(getattr(facenet, "input_size", EMBED_SIZE))  # 112 (224 for a 224-px Backbone)
        self.face_pool = nn.AdaptiveAvgPool2d((self.input_size, self.input_size))
        self.frozen = frozen
        self.embedding_dim = int(getattr(facenet, "embedding_dim", 512))
        if frozen:
            self.facenet.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> IdentityEncoder:
        super().train(mode)
        if self.frozen:
            self.facenet.eval()
        return self

    @staticmethod
    def _check(x: torch.Tensor, name: str = "x") -> None:
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != 3:
            shape = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise InputError(f"{name} must be a [B, 3, H, W] tensor in [-1, 1], got {shape}")

    def crop(self, x: torch.Tensor) -> torch.Tensor:
        """The identity-loss crop of 256-px faces, pooled to 112 px (the backbone's input size).

        Shape:
            ``[B, 3, H, W]`` -> ``[B, 3, 112, 112]``.
        """
        self._check(x)
        x = resize_to_face(x, FACE_SIZE)
        x = x[:, :, CROP_ROWS[0]:CROP_ROWS[1], CROP_COLS[0]:CROP_COLS[1]]
        return self.face_pool(x)

    def embed_112(self, x: torch.Tensor) -> torch.Tensor:
        """Embed faces that are already cropped to 112x112.

        Shape:
            ``[B, 3, 112, 112]`` -> ``[B, embedding_dim]``.
        """
        self._check(x)
        n = self.input_size
        if tuple(x.shape[-2:]) != (n, n):
            raise InputError(f"embed_112 expects [B, 3, {n}, {n}], got {list(x.shape)}")
        return self.facenet(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.facenet(self.crop(x))


# ---------------------------------------------------------------------------------------------
# Loading


_MODULE_PREFIXES = ("module.", "facenet.", "backbone.", "model.")


def _arcface_state(ckpt: Any, source: Any) -> dict[str, torch.Tensor]:
    sd = dict(ckpt_io.unwrap_state_dict(ckpt, source, keys=("state_dict", "model", "net")))
    sd = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    # Strip wrapper prefixes (DataParallel ``module.``, an IDLoss ``facenet.``...), repeatedly.
    changed = True
    while changed and sd:
        changed = False
        for p in _MODULE_PREFIXES:
            if all(k.startswith(p) for k in sd):
                sd = ckpt_io.strip_prefix(sd, p)
                changed = True
    return sd


def build_backbone_from_state(sd: dict[str, torch.Tensor], source: Any) -> nn.Module:
    """Build an empty :class:`Backbone` or :class:`IResNet` whose architecture matches ``sd``."""
    name = ckpt_io.source_name(source)
    if "input_layer.0.weight" in sd and any(k.startswith("body.") for k in sd):
        cfg = infer_body(sd, name)
        lin = ckpt_io.tensor(sd, "output_layer.3.weight", name, ndim=2)
        c = cfg.widths[3]
        spatial2 = int(lin.shape[1]) // c if c else 0
        input_size = {49: 112, 196: 224}.get(spatial2)
        if input_size is None or int(lin.shape[1]) != c * spatial2:
            raise CheckpointError(
                name, f"output_layer.3.weight has shape {list(lin.shape)}, expected [E, {c}*7*7] (112 px) or [E, {c}*14*14]"
            )
        return Backbone(
            cfg.units, cfg.mode, widths=cfg.widths, input_size=input_size, embedding_dim=int(lin.shape[0]),
            affine="output_layer.4.weight" in sd, se_reduction=cfg.se_reduction,
        )
    if "conv1.weight" in sd and "layer1.0.conv1.weight" in sd and "features.running_mean" in sd:
        layers, widths = [], []
        for i in range(1, 5):
            blocks = {int(m.group(1)) for k in sd if (m := re.fullmatch(rf"layer{i}\.(\d+)\.conv1\.weight", k))}
            if not blocks:
                raise CheckpointError(name, f"iresnet checkpoint without layer{i}.N blocks")
            layers.append(len(blocks))
            widths.append(int(ckpt_io.tensor(sd, f"layer{i}.0.conv1.weight", name, ndim=4).shape[0]))
        fc = ckpt_io.tensor(sd, "fc.weight", name, ndim=2)
        return IResNet(layers, widths=widths, embedding_dim=int(fc.shape[0]))
    keys = ", ".join(list(sd)[:5]) or "no tensors"
    raise CheckpointError(
        name,
        "not an ArcFace checkpoint: expected TreB1eN IR-SE keys (input_layer.*, body.N.*, output_layer.*) "
        f"or insightface iresnet keys (conv1, layer1..4, fc, features); found: {keys}",
    )


def load_arcface(source: ckpt_io.Source, *, frozen: bool = True) -> IdentityEncoder:
    """Load ArcFace from ``model_ir_se50.pth`` (or an insightface ``backbone.pth``) as an identity encoder.

    The depth (50/100/152 or custom), widths, unit type, embedding size and input size are
    inferred from the tensor shapes; ``module.`` prefixes (DataParallel) are tolerated.

    Args:
        source: Path to the checkpoint, or its state dict.
        frozen: Parameters without grad and BatchNorm kept in eval mode (default).

    Returns:
        An :class:`IdentityEncoder` in eval mode, on the CPU.

    Raises:
        CheckpointError: unreadable file, not an ArcFace layout, or tensors of wrong shapes.
    """
    ckpt = ckpt_io.load_checkpoint(source)
    sd = _arcface_state(ckpt, source)
    facenet = ckpt_io.build_empty(lambda: build_backbone_from_state(sd, source))
    what = "ArcFace IR-SE backbone" if isinstance(facenet, Backbone) else "ArcFace iresnet backbone"
    ckpt_io.load_checked(facenet, sd, source, what=what)
    return IdentityEncoder(facenet.eval(), frozen=frozen)


def tiny_arcface(*, mode: Mode = "ir_se", embedding_dim: int = 512, seed: int | None = 0) -> IdentityEncoder:
    """A tiny random IR-SE ArcFace (1 unit per stage, widths 16-128) with the real key layout.

    ``tiny_arcface().facenet.state_dict()`` saved with ``torch.save`` is a valid input to
    :func:`load_arcface` (the tiny model set's ``model_ir_se50.pth``).
    """
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        net = Backbone(TINY_UNITS, mode, widths=TINY_WIDTHS, embedding_dim=embedding_dim)
    return IdentityEncoder(net.eval())
