"""CIAGAN's generator (dvl-tum/ciagan ``source/arch/arch_unet_flex.py`` ``Generator``), same key layout.

A U-Net-like encoder-decoder over the 6-channel input (landmark image + masked face, 128 px,
[0, 1]) with the target identity injected at the 4 x 4 bottleneck: one-hot (1,200 classes)
-> 7 linear layers -> ``[32, 4, 4]`` -> 3 convolutions -> concatenated with the image code.
Every ``ConvLayer`` is reflection padding + a spectrally normalised convolution (keys
``conv2d.weight_orig``, ``conv2d.weight_u``, ``conv2d.weight_v``, ``conv2d.bias``).

The network is run in eval mode: spectral normalisation then divides by ``u . W v`` with the
stored ``u``, ``v`` (no power iteration), so outputs are deterministic. Upstream's ``test.py``
never calls ``.eval()`` and so runs one power iteration per call, which changes ``u`` and ``v``
from call to call.

Upstream hard-codes the widths (32, 64, 128, 256, 256). ``ngf`` (conv0's width) scales them
so that a tiny model set can hold a small generator of the same layout; it is inferred from
the checkpoint, as are ``input_nc``, ``num_classes``, ``img_size`` (128 with ``conv0``, else 64)
and ``encode_one_hot``.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from falco.errors import CheckpointError
from falco.models._checkpoint import (Source, load_checked, load_checkpoint, source_name, strip_wrapper_prefixes, tensor,
                                      unwrap_state_dict)

__all__ = ["Generator", "infer_ciagan_kwargs", "load_generator", "tiny_ciagan_state_dict"]

#: Side of the ``[32, side, side]`` identity code (the bottleneck of a 128 or 64 px generator).
_CODE_CHANNELS = 32


class ConvLayer(nn.Module):
    """Reflection pad + spectrally normalised conv (upstream ``ConvLayer``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int | None = None):
        super().__init__()
        padding = kernel_size // 2 if padding is None else padding
        self.reflection_pad = nn.ReflectionPad2d(padding)
        self.conv2d = nn.utils.spectral_norm(nn.Conv2d(in_channels, out_channels, kernel_size, stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2d(self.reflection_pad(x))


class ResidualBlockDown(nn.Module):
    """relu-conv-relu-conv-avgpool with a 1x1-conv-avgpool shortcut (halves the resolution)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1):
        super().__init__()
        self.conv_r1 = ConvLayer(in_channels, out_channels, kernel_size, stride)
        self.conv_r2 = ConvLayer(out_channels, out_channels, kernel_size, stride)
        self.conv_l = ConvLayer(in_channels, out_channels, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.avg_pool2d(self.conv_r2(F.relu(self.conv_r1(F.relu(x)))), 2)
        return F.avg_pool2d(self.conv_l(x), 2) + out


class ResidualBlockUp(nn.Module):
    """norm-relu-up-conv-norm-relu-conv with an up-1x1-conv shortcut (doubles the resolution)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, upsample: int = 2):
        super().__init__()
        self.upsample = nn.Upsample(scale_factor=upsample, mode="nearest")
        self.norm_r1 = nn.InstanceNorm2d(in_channels, affine=True)
        self.conv_r1 = ConvLayer(in_channels, out_channels, kernel_size, stride)
        self.norm_r2 = nn.InstanceNorm2d(out_channels, affine=True)
        self.conv_r2 = ConvLayer(out_channels, out_channels, kernel_size, stride)
        self.conv_l = ConvLayer(in_channels, out_channels, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv_r1(self.upsample(F.relu(self.norm_r1(x))))
        out = self.conv_r2(F.relu(self.norm_r2(out)))
        return self.conv_l(self.upsample(x)) + out


class ResidualBlock(nn.Module):
    """conv-norm-relu-conv-norm plus identity."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = ConvLayer(channels, channels, kernel_size=3, stride=1)
        self.in1 = nn.InstanceNorm2d(channels, affine=True)
        self.conv2 = ConvLayer(channels, channels, kernel_size=3, stride=1)
        self.in2 = nn.InstanceNorm2d(channels, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.in2(self.conv2(F.relu(self.in1(self.conv1(x))))) + x


def _norm(channels: int) -> nn.InstanceNorm2d:
    return nn.InstanceNorm2d(channels, affine=True)


class Generator(nn.Module):
    """CIAGAN generator, upstream ``arch_unet_flex.Generator`` (``ngf=32`` is upstream's).

    Args:
        input_nc: Input channels (6: landmark image + masked face).
        num_classes: Identities of the one-hot code (1,200 for the released model).
        encode_one_hot: Whether the identity branch exists.
        img_size: 128 or 64.
        ngf: Width of the first stage; upstream 32.
    """

    def __init__(self, input_nc: int = 6, num_classes: int = 1200, encode_one_hot: bool = True,
                 img_size: int = 128, ngf: int = 32):
        super().__init__()
        if img_size not in (64, 128):
            raise ValueError(f"img_size must be 64 or 128, got {img_size}")
        self.in_dim, self.num_classes, self.img_size, self.ngf = input_nc, num_classes, img_size, ngf
        c1, c2, c3, c4 = 2 * ngf, 4 * ngf, 8 * ngf, 8 * ngf
        ch = input_nc
        if img_size == 128:
            self.conv0 = ResidualBlockDown(ch, ngf)
            self.in0_e = _norm(ngf)
            ch = ngf
        self.conv1, self.in1_e = ResidualBlockDown(ch, c1), _norm(c1)
        self.conv2, self.in2_e = ResidualBlockDown(c1, c2), _norm(c2)
        self.conv3, self.in3_e = ResidualBlockDown(c2, c3), _norm(c3)
        self.conv4, self.in4_e = ResidualBlockDown(c3, c4), _norm(c4)
        self.embed = nn.Sequential(ConvLayer(2 * c4, c4, kernel_size=3, stride=1), _norm(c4))
        self.res1, self.res2, self.res3, self.res4 = (ResidualBlock(c4) for _ in range(4))
        self.deconv4, self.in4_d = ResidualBlockUp(c4, c4, upsample=2), _norm(c4)
        self.deconv3, self.in3_d = ResidualBlockUp(c4, c2), _norm(c2)
        self.deconv2, self.in2_d = ResidualBlockUp(c2, c1), _norm(c1)
        self.deconv1, self.in1_d = ResidualBlockUp(c1, ngf), _norm(ngf)
        out_ch = ngf
        if img_size == 128:
            self.deconv0, self.in0_d = ResidualBlockUp(ngf, ngf // 2), _norm(ngf // 2)
            out_ch = ngf // 2
        self.conv_end = nn.Sequential(nn.Conv2d(out_ch, 3, kernel_size=3, stride=1, padding=1))
        self.flag_onehot = encode_one_hot
        if encode_one_hot:
            h1, h2 = 8 * ngf, 16 * ngf  # upstream 256, 512
            code = _CODE_CHANNELS * 16
            dims = [num_classes, h1, h1, h1, h1, h2, h2, code]
            layers: list[nn.Module] = []
            for a, b in itertools.pairwise(dims):
                layers += [nn.Linear(a, b), nn.LeakyReLU(0.2, inplace=True)]
            self.encode_one_hot = nn.Sequential(*layers)
            self.encode_noise = nn.Sequential(
                ConvLayer(_CODE_CHANNELS, c1, kernel_size=3, stride=1), nn.LeakyReLU(0.2, inplace=True), _norm(c1),
                ConvLayer(c1, c2, kernel_size=3, stride=1), nn.LeakyReLU(0.2, inplace=True), _norm(c2),
                ConvLayer(c2, c4, kernel_size=3, stride=1), nn.LeakyReLU(0.2, inplace=True), _norm(c4),
            )
        else:
            self.encode_one_hot = None

    def forward(self, x: torch.Tensor, onehot: torch.Tensor | None = None, high_res: int = 0) -> torch.Tensor:
        """Generate the face (``high_res`` is accepted and unused, as upstream).

        Shape:
            ``x`` ``[B, input_nc, S, S]`` in [0, 1]; ``onehot`` ``[B, num_classes]``;
            returns ``[B, 3, S, S]`` (upstream then composites ``out * mask + face * (1 - mask)``
            and clamps to [0, 1]).
        """
        del high_res
        out = x
        if self.img_size == 128:
            out = self.in0_e(self.conv0(out))
        out = self.in1_e(self.conv1(out))
        out = self.in2_e(self.conv2(out))
        out = self.in3_e(self.conv3(out))
        out = self.in4_e(self.conv4(out))
        if onehot is not None and self.flag_onehot:
            noise = self.encode_one_hot(onehot).view(-1, _CODE_CHANNELS, 4, 4)
            out = self.embed(torch.cat((out, self.encode_noise(noise)), 1))
        out = self.res4(self.res3(self.res2(self.res1(out))))
        out = self.in4_d(self.deconv4(out))
        out = self.in3_d(self.deconv3(out))
        out = self.in2_d(self.deconv2(out))
        out = self.in1_d(self.deconv1(out))
        if self.img_size == 128:
            out = self.in0_d(self.deconv0(out))
        return self.conv_end(out)


def infer_ciagan_kwargs(state: Mapping[str, Any], source: Any = "<state dict>") -> dict[str, Any]:
    """Generator kwargs from checkpoint shapes (``input_nc``, ``num_classes``, ``img_size``, ...).

    Raises:
        CheckpointError: A tensor needed for the inference is missing or has the wrong rank.
    """
    img_size = 128 if "conv0.conv_r1.conv2d.weight_orig" in state else 64
    first = "conv0" if img_size == 128 else "conv1"
    w = tensor(state, f"{first}.conv_r1.conv2d.weight_orig", source, ndim=4)
    c1 = tensor(state, "conv1.conv_r1.conv2d.weight_orig", source, ndim=4).shape[0]
    if c1 % 2:
        raise CheckpointError(source_name(source), f"conv1 has {c1} channels; CIAGAN's widths are even")
    kwargs: dict[str, Any] = {"input_nc": int(w.shape[1]), "img_size": img_size, "ngf": int(c1 // 2)}
    kwargs["encode_one_hot"] = "encode_one_hot.0.weight" in state
    if kwargs["encode_one_hot"]:
        kwargs["num_classes"] = int(tensor(state, "encode_one_hot.0.weight", source, ndim=2).shape[1])
    return kwargs


def _unwrap(ckpt: Any, source: Any) -> dict[str, Any]:
    if not isinstance(ckpt, Mapping):
        raise CheckpointError(source_name(source), f"expected a state dict, got {type(ckpt).__name__}")
    state = unwrap_state_dict(ckpt, source, keys=("state_dict", "generator", "G", "model"))
    return strip_wrapper_prefixes(state, ("module.", "ciagan."))


def load_generator(source: Source, *, device: str | torch.device = "cpu") -> Generator:
    """Load CIAGAN's generator from upstream's ``.pth`` (a bare state dict) or a state dict.

    The architecture is inferred from the tensor shapes; the module is returned in eval mode.
    Keys may carry a ``module.`` (DataParallel) prefix.

    Raises:
        CheckpointError: Unreadable file, missing/unexpected keys or wrong shapes (the message
            names the file and the key).
    """
    state = _unwrap(load_checkpoint(source), source)
    kwargs = infer_ciagan_kwargs(state, source)
    G = Generator(**kwargs)
    load_checked(G, state, source, what="CIAGAN generator")
    return G.to(device).eval().requires_grad_(False)


def tiny_ciagan_state_dict(seed: int = 0, *, ngf: int = 4, num_classes: int = 16) -> dict[str, torch.Tensor]:
    """A small random CIAGAN generator's state dict (upstream layout, 128 px), for tiny model sets."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        G = Generator(num_classes=num_classes, ngf=ngf)
    return {k: v.detach().clone() for k, v in G.state_dict().items()}
