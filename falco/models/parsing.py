"""BiSeNet face parsing (zllrunning/face-parsing.PyTorch, ``79999_iter.pth``), same key layout.

The released network segments a face photo into the 19 CelebAMask-HQ classes of
:data:`CLASS_NAMES`. Its graph, re-implemented here from upstream ``model.py``/``resnet.py``:

- context path: a ResNet-18 (torchvision key names, no ``fc``) gives ``feat8`` (1/8),
  ``feat16`` (1/16) and ``feat32`` (1/32); a global-context branch (``conv_avg`` on the pooled
  ``feat32``) and two attention refinement modules (``arm32``, ``arm16``) are merged top-down
  with *nearest* upsampling and 3x3 heads (``conv_head32``, ``conv_head16``);
- no spatial path: the ResNet's ``feat8`` replaces it in the feature fusion module (``ffm``:
  1x1 conv of ``cat[feat8, feat16_up]``, channel attention, plus a residual);
- three heads (``conv_out`` on the fusion, ``conv_out16``, ``conv_out32`` on the context
  features), each upsampled *bilinearly with align_corners=True* to the input size. Inference
  (upstream ``test.py``) uses only the first; the other two are training-only auxiliary heads.

All convolutions are bias-free, all BatchNorms have eps 1e-5. Upstream hard-codes the widths;
:class:`BiSeNetConfig` makes them parameters, inferred from the checkpoint's shapes, so a tiny
model set can carry a small network of the same layout (:func:`tiny_bisenet_state_dict`).

Preprocessing (upstream ``test.py``): RGB resized to 512x512 with Pillow's bilinear filter,
``ToTensor`` (``/255``), ``Normalize`` with ImageNet's mean/std (:func:`parse_faces` does all
of it). ``l_``/``r_`` classes do not say whose left; region code merges the pairs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from falco.errors import CheckpointError, InputError
from falco.models._checkpoint import (Source, load_checked, load_checkpoint, source_name, strip_wrapper_prefixes,
                                      tensor, unwrap_state_dict)

__all__ = [
    "BiSeNet",
    "BiSeNetConfig",
    "CLASS_NAMES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PARSING_MODEL",
    "PARSING_SIZE",
    "infer_config",
    "load_bisenet",
    "load_parser",
    "normalize",
    "parse_faces",
    "tiny_bisenet_state_dict",
]

#: Registry name of the released weights (``falco models download bisenet-face-parsing``).
PARSING_MODEL = "bisenet-face-parsing"

#: CelebAMask-HQ labels in the network's output order (label ``i`` is ``CLASS_NAMES[i]``).
CLASS_NAMES: tuple[str, ...] = (
    "background", "skin", "l_brow", "r_brow", "l_eye", "r_eye", "eye_g", "l_ear", "r_ear", "ear_r",
    "nose", "mouth", "u_lip", "l_lip", "neck", "neck_l", "cloth", "hair", "hat",
)

#: torchvision's ImageNet normalisation, as upstream ``test.py`` applies it.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Side of the network's input in upstream ``test.py``.
PARSING_SIZE = 512


@dataclass(frozen=True)
class BiSeNetConfig:
    """Widths of a BiSeNet; the defaults are upstream's (``BiSeNet(n_classes=19)``).

    Attributes:
        n_classes: Output classes.
        widths: Output channels of the ResNet stem/``layer1`` .. ``layer4``.
        context: Channels of the context path (ARMs, heads, global context).
        fuse: Output channels of the feature fusion module.
        head: Middle channels of the main head ``conv_out``.
        aux_head: Middle channels of the auxiliary heads ``conv_out16``/``conv_out32``.
    """

    n_classes: int = 19
    widths: tuple[int, int, int, int] = (64, 128, 256, 512)
    context: int = 128
    fuse: int = 256
    head: int = 256
    aux_head: int = 64


class ConvBNReLU(nn.Module):
    """Bias-free conv, BatchNorm, ReLU (upstream ``ConvBNReLU``; keys ``conv``, ``bn``)."""

    def __init__(self, in_chan: int, out_chan: int, ks: int = 3, stride: int = 1, padding: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_chan, out_chan, ks, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(out_chan)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class BasicBlock(nn.Module):
    """ResNet basic block; a 1x1 conv + BN shortcut (``downsample.0/.1``) where the shape changes."""

    def __init__(self, in_chan: int, out_chan: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chan, out_chan, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_chan)
        self.conv2 = nn.Conv2d(out_chan, out_chan, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chan)
        self.downsample = None
        if in_chan != out_chan or stride != 1:
            self.downsample = nn.Sequential(nn.Conv2d(in_chan, out_chan, 1, stride, bias=False), nn.BatchNorm2d(out_chan))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(shortcut + residual)


def _layer(in_chan: int, out_chan: int, stride: int) -> nn.Sequential:
    return nn.Sequential(BasicBlock(in_chan, out_chan, stride), BasicBlock(out_chan, out_chan, 1))


class Resnet18(nn.Module):
    """The ResNet-18 trunk (no ``fc``): returns the 1/8, 1/16 and 1/32 features."""

    def __init__(self, widths: Sequence[int] = (64, 128, 256, 512)):
        super().__init__()
        w1, w2, w3, w4 = widths
        self.conv1 = nn.Conv2d(3, w1, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(w1)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = _layer(w1, w1, 1)
        self.layer2 = _layer(w1, w2, 2)
        self.layer3 = _layer(w2, w3, 2)
        self.layer4 = _layer(w3, w4, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        feat8 = self.layer2(self.layer1(x))
        feat16 = self.layer3(feat8)
        return feat8, feat16, self.layer4(feat16)


class AttentionRefinementModule(nn.Module):
    """3x3 ConvBNReLU, then scaled by a sigmoid channel attention of its global mean."""

    def __init__(self, in_chan: int, out_chan: int):
        super().__init__()
        self.conv = ConvBNReLU(in_chan, out_chan, 3, 1, 1)
        self.conv_atten = nn.Conv2d(out_chan, out_chan, 1, bias=False)
        self.bn_atten = nn.BatchNorm2d(out_chan)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.conv(x)
        atten = torch.sigmoid(self.bn_atten(self.conv_atten(F.adaptive_avg_pool2d(feat, 1))))
        return feat * atten


class ContextPath(nn.Module):
    """ResNet-18 plus the top-down context merge; returns ``feat8``, ``feat16_up``, ``feat32_up``."""

    def __init__(self, widths: Sequence[int], context: int):
        super().__init__()
        self.resnet = Resnet18(widths)
        self.arm16 = AttentionRefinementModule(widths[2], context)
        self.arm32 = AttentionRefinementModule(widths[3], context)
        self.conv_head32 = ConvBNReLU(context, context, 3, 1, 1)
        self.conv_head16 = ConvBNReLU(context, context, 3, 1, 1)
        self.conv_avg = ConvBNReLU(widths[3], context, 1, 1, 0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feat8, feat16, feat32 = self.resnet(x)
        avg = self.conv_avg(F.adaptive_avg_pool2d(feat32, 1))
        feat32_sum = self.arm32(feat32) + F.interpolate(avg, feat32.shape[2:], mode="nearest")
        feat32_up = self.conv_head32(F.interpolate(feat32_sum, feat16.shape[2:], mode="nearest"))
        feat16_sum = self.arm16(feat16) + feat32_up
        feat16_up = self.conv_head16(F.interpolate(feat16_sum, feat8.shape[2:], mode="nearest"))
        return feat8, feat16_up, feat32_up


class FeatureFusionModule(nn.Module):
    """``feat = convblk(cat[fsp, fcp])``; returns ``feat * sigmoid(conv2(relu(conv1(mean(feat))))) + feat``."""

    def __init__(self, in_chan: int, out_chan: int):
        super().__init__()
        self.convblk = ConvBNReLU(in_chan, out_chan, 1, 1, 0)
        self.conv1 = nn.Conv2d(out_chan, out_chan // 4, 1, bias=False)
        self.conv2 = nn.Conv2d(out_chan // 4, out_chan, 1, bias=False)

    def forward(self, fsp: torch.Tensor, fcp: torch.Tensor) -> torch.Tensor:
        feat = self.convblk(torch.cat([fsp, fcp], dim=1))
        atten = torch.sigmoid(self.conv2(F.relu(self.conv1(F.adaptive_avg_pool2d(feat, 1)))))
        return feat * atten + feat


class BiSeNetOutput(nn.Module):
    """A segmentation head: 3x3 ConvBNReLU then a bias-free 1x1 conv to the classes."""

    def __init__(self, in_chan: int, mid_chan: int, n_classes: int):
        super().__init__()
        self.conv = ConvBNReLU(in_chan, mid_chan, 3, 1, 1)
        self.conv_out = nn.Conv2d(mid_chan, n_classes, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.conv(x))


class BiSeNet(nn.Module):
    """The face-parsing BiSeNet (keys ``cp.*``, ``ffm.*``, ``conv_out*``), see the module docstring."""

    def __init__(self, config: BiSeNetConfig | None = None):
        super().__init__()
        c = config or BiSeNetConfig()
        self.config = c
        self.cp = ContextPath(c.widths, c.context)
        self.ffm = FeatureFusionModule(c.widths[1] + c.context, c.fuse)
        self.conv_out = BiSeNetOutput(c.fuse, c.head, c.n_classes)
        self.conv_out16 = BiSeNetOutput(c.context, c.aux_head, c.n_classes)
        self.conv_out32 = BiSeNetOutput(c.context, c.aux_head, c.n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Main logits (what upstream ``test.py`` argmaxes), bilinearly upsampled to the input size.

        Shape: ``x`` ``[N, 3, H, W]`` ImageNet-normalised RGB -> ``[N, n_classes, H, W]`` raw logits.
        """
        feat8, feat16_up, _ = self.cp(x)
        out = self.conv_out(self.ffm(feat8, feat16_up))
        return F.interpolate(out, x.shape[2:], mode="bilinear", align_corners=True)

    def forward_all(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The main and both auxiliary logits, as upstream's ``forward`` returns them.

        Shape: ``[N, 3, H, W]`` -> three ``[N, n_classes, H, W]``.
        """
        feat8, feat16_up, feat32_up = self.cp(x)
        outs = (self.conv_out(self.ffm(feat8, feat16_up)), self.conv_out16(feat16_up), self.conv_out32(feat32_up))
        return tuple(F.interpolate(o, x.shape[2:], mode="bilinear", align_corners=True) for o in outs)


def infer_config(state: Mapping[str, Any], source: Any = "<state dict>") -> BiSeNetConfig:
    """The :class:`BiSeNetConfig` of a checkpoint, from its tensor shapes.

    Raises:
        CheckpointError: A tensor the inference needs is missing or has the wrong rank.
    """
    def out_channels(key: str) -> int:
        return int(tensor(state, key, source, ndim=4).shape[0])

    widths = tuple(out_channels(f"cp.resnet.layer{i}.0.conv1.weight") for i in range(1, 5))
    stem = out_channels("cp.resnet.conv1.weight")
    if stem != widths[0]:
        raise CheckpointError(source_name(source), f"cp.resnet.conv1 has {stem} channels but layer1 {widths[0]}")
    return BiSeNetConfig(
        n_classes=out_channels("conv_out.conv_out.weight"),
        widths=widths,  # type: ignore[arg-type]
        context=out_channels("cp.arm16.conv.conv.weight"),
        fuse=out_channels("ffm.convblk.conv.weight"),
        head=out_channels("conv_out.conv.conv.weight"),
        aux_head=out_channels("conv_out16.conv.conv.weight"),
    )


def load_bisenet(source: Source, *, device: str | torch.device = "cpu") -> BiSeNet:
    """Load the face-parsing BiSeNet from ``79999_iter.pth`` (a bare state dict) or a state dict.

    The file is read with ``weights_only=True``; ``state_dict``/``module.`` wrappers are
    accepted; the widths are inferred from the shapes. Returned frozen, in eval mode.

    Raises:
        CheckpointError: Unreadable file, missing/unexpected keys or wrong shapes (the message
            names the file and the key).
    """
    ckpt = load_checkpoint(source)
    state = strip_wrapper_prefixes(unwrap_state_dict(ckpt, source, keys=("state_dict", "model")), ("module.",))
    net = BiSeNet(infer_config(state, source))
    load_checked(net, state, source, what="BiSeNet face parser")
    return net.to(device).eval().requires_grad_(False)


def load_parser(models: str | os.PathLike[str] | None = None, *, device: str | torch.device = "cpu") -> BiSeNet:
    """Load the model set's face parser (registry name :data:`PARSING_MODEL`).

    Raises:
        ModelNotFoundError: Not installed; the message says ``falco models download bisenet-face-parsing``.
        ChecksumError, CheckpointError: A corrupt or unreadable file.
    """
    from falco.pretrained.modelset import resolve_model

    return load_bisenet(resolve_model(PARSING_MODEL, models), device=device)


def normalize(image01: torch.Tensor) -> torch.Tensor:
    """``transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)`` on a batch. Shape: ``[N, 3, H, W]`` in [0, 1]."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=image01.dtype, device=image01.device)[:, None, None]
    std = torch.tensor(IMAGENET_STD, dtype=image01.dtype, device=image01.device)[:, None, None]
    return (image01 - mean) / std


def _check_images(images: Any) -> np.ndarray:
    try:
        array = np.asarray(images)
    except ValueError:  # a ragged list of images
        raise InputError("images must be uint8 RGB of shape [B, H, W, 3]: all of one size") from None
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[-1] != 3 or array.dtype != np.uint8 or 0 in array.shape:
        raise InputError(
            f"images must be uint8 RGB of shape [B, H, W, 3], got {array.dtype} of shape {list(array.shape)}"
        )
    return array


@torch.no_grad()
def parse_faces(net: BiSeNet, images: np.ndarray, *, batch_size: int = 8) -> np.ndarray:
    """Class ids of every pixel, with upstream ``test.py``'s preprocessing.

    Each image is resized to 512x512 with Pillow's bilinear filter, scaled to [0, 1] and
    normalised with ImageNet's mean/std; the main logits are resized back to the image's size
    (bilinear, antialiased when shrinking; nothing to do for 512-px input) and argmaxed.

    Args:
        net: The parser (:func:`load_bisenet`); run on its own device.
        images: RGB images (a single ``[H, W, 3]`` one is taken as a batch of one).
            Shape: ``[B, H, W, 3]`` uint8.
        batch_size: Images per forward pass.

    Returns:
        Labels indexing :data:`CLASS_NAMES`. Shape: ``[B, H, W]`` uint8.

    Raises:
        InputError: Images not ``[B, H, W, 3]`` uint8, or a bad ``batch_size``.
    """
    images = _check_images(images)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a positive int, got {batch_size!r}")
    param = next(net.parameters())
    height, width = images.shape[1:3]
    out = np.empty(images.shape[:3], dtype=np.uint8)
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        if (height, width) != (PARSING_SIZE, PARSING_SIZE):
            chunk = np.stack([np.asarray(Image.fromarray(im).resize((PARSING_SIZE, PARSING_SIZE), Image.BILINEAR))
                              for im in chunk])
        x = torch.from_numpy(np.ascontiguousarray(chunk)).to(param.device).permute(0, 3, 1, 2)
        logits = net(normalize(x.to(param.dtype).div(255)))
        if (height, width) != (PARSING_SIZE, PARSING_SIZE):
            shrink = height < PARSING_SIZE or width < PARSING_SIZE
            logits = F.interpolate(logits.float(), (height, width), mode="bilinear", align_corners=False,
                                   antialias=shrink)
        out[start:start + len(chunk)] = logits.argmax(1).to(torch.uint8).cpu().numpy()
    return out


def tiny_bisenet_state_dict(seed: int = 0, *, n_classes: int = 19) -> dict[str, torch.Tensor]:
    """A small random BiSeNet's state dict in upstream's key layout (widths 8..32), for tiny model sets.

    BatchNorm running statistics are left at PyTorch's defaults (mean 0, variance 1).
    """
    config = BiSeNetConfig(n_classes=n_classes, widths=(8, 16, 24, 32), context=16, fuse=32, head=32, aux_head=8)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = BiSeNet(config)
    return {k: v.detach().clone() for k, v in net.state_dict().items()}
