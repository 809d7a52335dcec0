"""StyleGAN2 generator with rosinality's state-dict layout and NVlabs-style API.

The module tree mirrors rosinality/stylegan2-pytorch ``model.py`` so that its checkpoints
(``stylegan2-ffhq-config-f.pt``, e4e's ``decoder.*``) load with ``load_state_dict``
unchanged: ``style.N``, ``input.input``, ``conv1``, ``to_rgb1``, ``convs.N``, ``to_rgbs.N``,
``noises.noise_N``. The public API follows NVlabs: ``G.mapping``, ``G.synthesis``,
``z_dim``, ``w_dim``, ``num_ws``, ``img_resolution`` and the ``w_avg`` buffer.

Custom ops come from :mod:`stylegan2_ops` (CUDA kernels when built, pure-PyTorch twins
otherwise).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

import stylegan2_ops
from falco.errors import InputError

NoiseMode = Literal["const", "random", "none"]
BLUR_KERNEL = (1, 3, 3, 1)
FP16_CLAMP = 256.0  # NVIDIA's conv_clamp for layers run in fp16


def _clamp_for(x: torch.Tensor, clamp: float | None) -> float | None:
    return FP16_CLAMP if clamp is None and x.dtype == torch.float16 else clamp


def default_channels(img_resolution: int = 1024, channel_multiplier: int = 2) -> dict[int, int]:
    """Rosinality's per-resolution channel table (config-f at ``channel_multiplier=2``)."""
    table = {
        4: 512, 8: 512, 16: 512, 32: 512,
        64: 256 * channel_multiplier, 128: 128 * channel_multiplier,
        256: 64 * channel_multiplier, 512: 32 * channel_multiplier, 1024: 16 * channel_multiplier,
    }
    return {res: ch for res, ch in table.items() if res <= img_resolution}


def make_kernel(k: Sequence[float]) -> torch.Tensor:
    """Normalised 2-d FIR kernel from a 1-d tap list (outer product)."""
    k = torch.tensor(k, dtype=torch.float32)
    if k.ndim == 1:
        k = k[None, :] * k[:, None]
    return k / k.sum()


class PixelNorm(nn.Module):
    """Normalise each vector to unit second moment (``style.0``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(torch.mean(x * x, dim=1, keepdim=True) + 1e-8)


class EqualLinear(nn.Module):
    """Fully connected layer with equalised learning rate (keys ``weight``, ``bias``)."""

    def __init__(self, in_dim: int, out_dim: int, *, bias_init: float = 0.0, lr_mul: float = 1.0,
                 activation: str | None = None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim).div_(lr_mul))
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init)))
        self.scale = (1 / math.sqrt(in_dim)) * lr_mul
        self.lr_mul = lr_mul
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight * self.scale)
        act = "lrelu" if self.activation else "linear"
        return stylegan2_ops.bias_act(out, self.bias * self.lr_mul, act=act)


class ModulatedConv2d(nn.Module):
    """Modulated (and optionally demodulated) convolution, optionally upsampling x2.

    Keys: ``weight`` ``[1, out, in, k, k]``, ``modulation.*`` and, when upsampling,
    ``blur.kernel``.
    """

    def __init__(self, in_channel: int, out_channel: int, kernel_size: int, style_dim: int, *,
                 demodulate: bool = True, upsample: bool = False,
                 blur_kernel: Sequence[float] = BLUR_KERNEL) -> None:
        super().__init__()
        self.in_channel, self.out_channel, self.kernel_size = in_channel, out_channel, kernel_size
        self.upsample = upsample
        self.demodulate = demodulate
        self.scale = 1 / math.sqrt(in_channel * kernel_size**2)
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.randn(1, out_channel, in_channel, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_channel, bias_init=1)
        if upsample:
            factor = 2
            p = (len(blur_kernel) - factor) - (kernel_size - 1)
            self.blur = Blur(blur_kernel, pad=((p + 1) // 2 + factor - 1, p // 2 + 1), upsample_factor=factor)

    def forward(self, x: torch.Tensor, style: torch.Tensor, fused: bool = True) -> torch.Tensor:
        """Modulate, convolve, demodulate.

        ``fused`` (rosinality, NVIDIA's ``fused_modconv``) folds the batch into one grouped
        convolution with per-sample weights. ``fused=False`` scales the activations instead,
        runs one ordinary convolution with the shared weight and scales the output by the
        demodulation coefficients: the same function, but it keeps channels-last tensors and
        uses dense (tensor-core friendly) convolutions, usually faster at large batch.
        """
        if not fused:
            return self._forward_split(x, style)
        batch, in_channel, height, width = x.shape
        style = self.modulation(style).view(batch, 1, in_channel, 1, 1)
        weight = self.scale * self.weight * style
        if self.demodulate:
            demod = torch.rsqrt(weight.pow(2).sum([2, 3, 4]) + 1e-8)
            weight = weight * demod.view(batch, self.out_channel, 1, 1, 1)
        k = self.kernel_size
        x = x.reshape(1, batch * in_channel, height, width)
        if self.upsample:
            weight = weight.transpose(1, 2).reshape(batch * in_channel, self.out_channel, k, k)
            out = F.conv_transpose2d(x, weight, padding=0, stride=2, groups=batch)
            out = out.view(batch, self.out_channel, *out.shape[2:])
            return self.blur(out)
        weight = weight.view(batch * self.out_channel, in_channel, k, k)
        out = F.conv2d(x, weight, padding=self.padding, groups=batch)
        return out.view(batch, self.out_channel, *out.shape[2:])

    def _forward_split(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        s = self.modulation(style)  # [B, in]
        weight = self.scale * self.weight[0]  # [out, in, k, k]
        x = x * s.view(batch, -1, 1, 1).to(x.dtype)
        if self.upsample:
            out = self.blur(F.conv_transpose2d(x, weight.transpose(0, 1), padding=0, stride=2))
        else:
            out = F.conv2d(x, weight, padding=self.padding)
        if self.demodulate:
            demod = torch.rsqrt((weight[None] * s[:, None, :, None, None]).pow(2).sum([2, 3, 4]) + 1e-8)
            out = out * demod.view(batch, self.out_channel, 1, 1).to(out.dtype)
        return out


class Blur(nn.Module):
    """FIR low-pass filter (buffer ``kernel``), scaled by ``upsample_factor**2``."""

    def __init__(self, kernel: Sequence[float], pad: tuple[int, int], upsample_factor: int = 1) -> None:
        super().__init__()
        k = make_kernel(kernel)
        if upsample_factor > 1:
            k = k * upsample_factor**2
        self.register_buffer("kernel", k)
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p0, p1 = self.pad
        return stylegan2_ops.upfirdn2d(x, self.kernel, padding=[p0, p1, p0, p1])


class Upsample(nn.Module):
    """x2 FIR upsampling of the RGB skip branch (buffer ``kernel``)."""

    def __init__(self, kernel: Sequence[float] = BLUR_KERNEL, factor: int = 2) -> None:
        super().__init__()
        self.factor = factor
        self.register_buffer("kernel", make_kernel(kernel) * factor**2)
        p = self.kernel.shape[0] - factor
        self.pad = ((p + 1) // 2 + factor - 1, p // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p0, p1 = self.pad
        return stylegan2_ops.upfirdn2d(x, self.kernel, up=self.factor, padding=[p0, p1, p0, p1])


class NoiseInjection(nn.Module):
    """Add per-pixel noise scaled by a learnt strength (key ``weight`` ``[1]``)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        if noise is None:
            return x
        return x + (self.weight * noise).to(x.dtype)


class FusedLeakyReLU(nn.Module):
    """Bias + leaky ReLU (0.2) + gain sqrt(2) (key ``bias``), clamped to +-``clamp`` if given.

    fp16 activations without a ``clamp`` are clamped to +-``FP16_CLAMP`` (NVIDIA's ``conv_clamp``
    for its fp16 layers) so that they cannot overflow.
    """

    def __init__(self, channels: int, clamp: float | None = None) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))
        self.clamp = clamp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return stylegan2_ops.bias_act(x, self.bias, act="lrelu", clamp=_clamp_for(x, self.clamp))


class ConstantInput(nn.Module):
    """Learnt 4x4 input (key ``input`` ``[1, C, 4, 4]``)."""

    def __init__(self, channel: int, size: int = 4) -> None:
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channel, size, size))

    def forward(self, batch: int) -> torch.Tensor:
        return self.input.repeat(batch, 1, 1, 1)


class StyledConv(nn.Module):
    """Modulated conv, noise, bias and activation: one synthesis layer."""

    def __init__(self, in_channel: int, out_channel: int, kernel_size: int, style_dim: int, *,
                 upsample: bool = False, blur_kernel: Sequence[float] = BLUR_KERNEL,
                 conv_clamp: float | None = None) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(in_channel, out_channel, kernel_size, style_dim,
                                    upsample=upsample, blur_kernel=blur_kernel)
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_channel, clamp=conv_clamp)

    def forward(self, x: torch.Tensor, style: torch.Tensor, noise: torch.Tensor | None,
                fused: bool = True) -> torch.Tensor:
        return self.activate(self.noise(self.conv(x, style, fused), noise))


class ToRGB(nn.Module):
    """1x1 modulated conv to RGB (not demodulated) plus the upsampled skip."""

    def __init__(self, in_channel: int, style_dim: int, *, upsample: bool = True,
                 blur_kernel: Sequence[float] = BLUR_KERNEL, conv_clamp: float | None = None) -> None:
        super().__init__()
        if upsample:
            self.upsample = Upsample(blur_kernel)
        self.conv = ModulatedConv2d(in_channel, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))
        self.conv_clamp = conv_clamp

    def forward(self, x: torch.Tensor, style: torch.Tensor, skip: torch.Tensor | None = None,
                fused: bool = True) -> torch.Tensor:
        out = self.conv(x, style, fused)
        clamp = _clamp_for(out, self.conv_clamp)
        if clamp is None:
            out = out + self.bias
        else:  # NVIDIA's ToRGBLayer: bias_act(x, b, clamp=conv_clamp), before the skip is added
            out = stylegan2_ops.bias_act(out, self.bias.view(3), clamp=clamp)
        if out.dtype in (torch.float16, torch.bfloat16):
            out = out.float()  # the RGB skip stays fp32, as NVIDIA keeps ``img``
        if skip is not None:
            out = out + self.upsample(skip)
        return out


@dataclass
class SynthesisPrefix:
    """Synthesis state after the first ``pos`` layers (see :meth:`Generator.frozen_prefix`).

    Attributes:
        x: Features after the last layer run. Shape: ``[B, C, res, res]``.
        skip: The RGB skip output so far (None before the first ToRGB). Shape: ``[B, 3, r, r]``.
        pos: Number of synthesis layers already run.
        num_frozen_ws: The layers run read only ``ws[:, :num_frozen_ws]``.
    """

    x: torch.Tensor
    skip: torch.Tensor | None
    pos: int
    num_frozen_ws: int


class Generator(nn.Module):
    """StyleGAN2 generator (rosinality keys, NVlabs-style API).

    Args:
        img_resolution: Output resolution (a power of two, >= 8).
        w_dim: Width of z and w (rosinality's ``style_dim``).
        num_mapping_layers: Fully connected layers in the mapping network (``n_mlp``).
        channels: Channels per resolution ``{4: c4, 8: c8, ...}``; defaults to rosinality's
            table at ``channel_multiplier``.
        channel_multiplier: Used only when ``channels`` is None.
        lr_mlp: Learning-rate multiplier of the mapping network.
        conv_clamp: Clamp every synthesis layer's output to +-``conv_clamp`` as NVIDIA's
            stylegan2-ada does (``ffhq.pkl`` uses 256; keeps fp16/bf16 in range). None: no clamp
            (rosinality, the original StyleGAN2).

    Attributes:
        truncation_layers: Truncation moves only ``ws[:, :truncation_layers]`` toward ``w_avg``
            (genforce's ``trunc_layers``); None (the default, every layout) moves every layer.
            Below ``num_ws`` only :meth:`mapping_ws` can truncate (one ``w`` per sample cannot
            express it).
    """

    def __init__(self, img_resolution: int = 1024, w_dim: int = 512, num_mapping_layers: int = 8, *,
                 channels: dict[int, int] | None = None, channel_multiplier: int = 2,
                 lr_mlp: float = 0.01, blur_kernel: Sequence[float] = BLUR_KERNEL,
                 conv_clamp: float | None = None) -> None:
        super().__init__()
        log_size = int(math.log2(img_resolution))
        if img_resolution < 8 or 2**log_size != img_resolution:
            raise InputError(f"img_resolution must be a power of two >= 8, got {img_resolution}")
        channels = dict(channels) if channels is not None else default_channels(img_resolution, channel_multiplier)
        missing = [2**i for i in range(2, log_size + 1) if 2**i not in channels]
        if missing:
            raise InputError(f"channels: no entry for resolutions {missing}")
        self.img_resolution = img_resolution
        self.z_dim = self.w_dim = w_dim
        self.num_mapping_layers = num_mapping_layers
        self.channels = {res: int(channels[res]) for res in sorted(channels) if res <= img_resolution}
        self.lr_mlp = lr_mlp
        self.conv_clamp = None if conv_clamp is None else float(conv_clamp)
        self.num_ws = log_size * 2 - 2
        self.log_size = log_size

        self.style = nn.Sequential(PixelNorm(), *[
            EqualLinear(w_dim, w_dim, lr_mul=lr_mlp, activation="fused_lrelu") for _ in range(num_mapping_layers)
        ])
        self.input = ConstantInput(self.channels[4])
        clamp = self.conv_clamp
        self.conv1 = StyledConv(self.channels[4], self.channels[4], 3, w_dim, blur_kernel=blur_kernel,
                                conv_clamp=clamp)
        self.to_rgb1 = ToRGB(self.channels[4], w_dim, upsample=False, conv_clamp=clamp)
        self.convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        self.noises = nn.Module()
        for layer_idx in range(self.num_ws - 1):
            res = 2 ** ((layer_idx + 5) // 2)
            self.noises.register_buffer(f"noise_{layer_idx}", torch.randn(1, 1, res, res))
        in_channel = self.channels[4]
        for i in range(3, log_size + 1):
            out_channel = self.channels[2**i]
            self.convs.append(StyledConv(in_channel, out_channel, 3, w_dim, upsample=True, blur_kernel=blur_kernel,
                                         conv_clamp=clamp))
            self.convs.append(StyledConv(out_channel, out_channel, 3, w_dim, blur_kernel=blur_kernel,
                                         conv_clamp=clamp))
            self.to_rgbs.append(ToRGB(out_channel, w_dim, conv_clamp=clamp))
            in_channel = out_channel
        self.register_buffer("w_avg", torch.zeros(w_dim))
        self.truncation_layers: int | None = None

    # -- configuration ---------------------------------------------------------------------
    @property
    def init_kwargs(self) -> dict:
        """Constructor arguments that rebuild this architecture."""
        return dict(img_resolution=self.img_resolution, w_dim=self.w_dim,
                    num_mapping_layers=self.num_mapping_layers, channels=dict(self.channels),
                    lr_mlp=self.lr_mlp, conv_clamp=self.conv_clamp)

    # -- mapping ---------------------------------------------------------------------------
    def mapping(self, z: torch.Tensor, truncation_psi: float = 1.0) -> torch.Tensor:
        """Map latent z to w, optionally truncated toward ``w_avg`` (every layer; see ``truncation_layers``).

        Shape:
            z ``[B, z_dim]`` -> w ``[B, w_dim]``.
        """
        if z.ndim != 2 or z.shape[1] != self.z_dim:
            raise InputError(f"z must have shape [B, {self.z_dim}], got {list(z.shape)}")
        w = self.style(z)
        if truncation_psi != 1.0:
            if self.truncation_layers is not None and self.truncation_layers < self.num_ws:
                raise InputError(f"this generator truncates only its first {self.truncation_layers} of "
                                 f"{self.num_ws} layers (truncation_layers); use G.mapping_ws(z, truncation_psi)")
            w = self.w_avg.lerp(w, truncation_psi)
        return w

    def mapping_ws(self, z: torch.Tensor, truncation_psi: float = 1.0) -> torch.Tensor:
        """Map z to per-layer codes, truncating the first ``truncation_layers`` (genforce ``get_w``).

        Shape:
            z ``[B, z_dim]`` -> ws ``[B, num_ws, w_dim]``.
        """
        ws = self.mapping(z).unsqueeze(1).repeat(1, self.num_ws, 1)
        n = self.num_ws if self.truncation_layers is None else min(self.truncation_layers, self.num_ws)
        if truncation_psi != 1.0 and n > 0:
            ws[:, :n] = self.w_avg.lerp(ws[:, :n], truncation_psi)
        return ws

    def mean_w(self, num_samples: int = 10_000, *, seed: int = 0, batch_size: int = 1000) -> torch.Tensor:
        """Mean of mapped z over ``num_samples`` seeded samples (to fill ``w_avg``).

        Shape:
            returns ``[w_dim]``.
        """
        gen = torch.Generator().manual_seed(seed)
        total = torch.zeros(self.w_dim, dtype=torch.float64)
        device = self.w_avg.device
        with torch.no_grad():
            for start in range(0, num_samples, batch_size):
                n = min(batch_size, num_samples - start)
                z = torch.randn(n, self.z_dim, generator=gen).to(device)
                total += self.style(z).double().sum(0).cpu()
        return (total / num_samples).float()

    # -- synthesis -------------------------------------------------------------------------
    def _noise(self, layer_idx: int, x: torch.Tensor, noise_mode: NoiseMode) -> torch.Tensor | None:
        if noise_mode == "none":
            return None
        buf = getattr(self.noises, f"noise_{layer_idx}")
        if noise_mode == "const":
            return buf.to(x.dtype)
        return torch.randn(x.shape[0], 1, *buf.shape[2:], device=x.device, dtype=x.dtype)

    def _layers(self) -> list[tuple[str, nn.Module, int, int]]:
        """The synthesis layers in order: ``(kind, module, ws index, resolution)``.

        A ``'conv'`` layer reads ``ws[:, idx]`` and noise buffer ``idx``; a ``'rgb'`` layer reads
        ``ws[:, idx]`` and updates the RGB skip. The ws indices never decrease.
        """
        layers: list[tuple[str, nn.Module, int, int]] = [("conv", self.conv1, 0, 4), ("rgb", self.to_rgb1, 1, 4)]
        i = 1
        for k, (up_conv, conv, to_rgb) in enumerate(zip(self.convs[::2], self.convs[1::2], self.to_rgbs)):
            res = 8 << k
            layers += [("conv", up_conv, i, res), ("conv", conv, i + 1, res), ("rgb", to_rgb, i + 2, res)]
            i += 2
        return layers

    def _check_synthesis_args(self, ws: torch.Tensor, noise_mode: str, max_resolution: int | None) -> torch.Tensor:
        if noise_mode not in ("const", "random", "none"):
            raise InputError(f"noise_mode must be 'const', 'random' or 'none', got {noise_mode!r}")
        if ws.ndim == 2:
            ws = ws.unsqueeze(1).expand(-1, self.num_ws, -1)
        if ws.ndim != 3 or ws.shape[1] != self.num_ws or ws.shape[2] != self.w_dim:
            raise InputError(f"ws must have shape [B, {self.num_ws}, {self.w_dim}], got {list(ws.shape)}")
        if max_resolution is not None and (max_resolution < 4 or max_resolution & (max_resolution - 1)):
            raise InputError(f"max_resolution must be a power of two >= 4, got {max_resolution}")
        return ws

    def frozen_prefix(self, ws: torch.Tensor, num_frozen_ws: int, noise_mode: NoiseMode = "const", *,
                      channels_last: bool = False) -> "SynthesisPrefix":
        """Run the synthesis layers that read only ``ws[:, :num_frozen_ws]``, to reuse them.

        FALCO optimises ``ws[:, 3:8]``: the 4x4 layers and the 8x8 convolutions then never
        change, so :meth:`synthesis` can start from this state at every step instead of
        recomputing them. Only ``ws[:, :num_frozen_ws]`` is read; the result is the same as
        rendering from scratch. ``noise_mode='random'`` is refused (the noise would be frozen).
        """
        ws = self._check_synthesis_args(ws, noise_mode, None)
        if noise_mode == "random":
            raise InputError("frozen_prefix: noise_mode 'random' would freeze the noise; use 'const' or 'none'")
        x, skip, pos, num_read = self._const_input(ws.shape[0], channels_last), None, 0, 0
        for i, (kind, layer, idx, _res) in enumerate(self._layers()):
            if idx >= num_frozen_ws:
                break
            x, skip = self._run_layer(x, skip, kind, layer, idx, ws, noise_mode, fused=not channels_last)
            pos, num_read = i + 1, idx + 1
        return SynthesisPrefix(x=x, skip=skip, pos=pos, num_frozen_ws=num_read)

    def _const_input(self, batch: int, channels_last: bool) -> torch.Tensor:
        x = self.input(batch)
        return x.contiguous(memory_format=torch.channels_last) if channels_last else x

    def _run_layer(self, x: torch.Tensor, skip: torch.Tensor | None, kind: str, layer: nn.Module, idx: int,
                   ws: torch.Tensor, noise_mode: NoiseMode, *, fused: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One layer of :meth:`_layers`: a conv updates the features, a ToRGB the skip."""
        if kind == "conv":
            return layer(x, ws[:, idx], self._noise(idx, x, noise_mode), fused), skip
        return x, layer(x, ws[:, idx], skip, fused)

    def synthesis(self, ws: torch.Tensor, noise_mode: NoiseMode = "const", *,
                  max_resolution: int | None = None, prefix: "SynthesisPrefix | None" = None,
                  fused_modconv: bool = True, channels_last: bool = False,
                  num_fp16_res: int = 0, fp16_dtype: torch.dtype = torch.float16) -> torch.Tensor:
        """Render images from per-layer codes.

        Args:
            ws: ``[B, num_ws, w_dim]`` (W+), or ``[B, w_dim]`` broadcast to every layer.
            noise_mode: ``'const'`` (stored noise buffers), ``'random'`` or ``'none'``.
            max_resolution: Stop at this resolution and return the RGB skip output there
                (an approximation of the downsampled full image that skips the costly last
                layers; ``None`` renders at ``img_resolution``).
            prefix: A :meth:`frozen_prefix` of the same faces: its layers are not recomputed
                (``ws[:, :prefix.num_frozen_ws]`` must be the codes it was computed from).
            fused_modconv: Grouped per-sample convolutions (True) or activation scaling with
                dense convolutions (False); see :meth:`ModulatedConv2d.forward`.
            channels_last: Run the convolutions on channels-last tensors (implies
                ``fused_modconv=False``).
            num_fp16_res: Run the top ``num_fp16_res`` resolutions under autocast to
                ``fp16_dtype`` (NVIDIA's ``num_fp16_res``; 4 for its FFHQ models); the others,
                the RGB skip and the demodulation coefficients stay fp32. fp16 layers clamp their
                activations to +-256 (``conv_clamp``).

        Shape:
            ws ``[B, num_ws, w_dim]`` -> image ``[B, 3, img_resolution, img_resolution]``
            in about [-1, 1].
        """
        ws = self._check_synthesis_args(ws, noise_mode, max_resolution)
        if prefix is None:
            x, skip, pos = self._const_input(ws.shape[0], channels_last), None, 0
        elif prefix.x.shape[0] != ws.shape[0]:
            raise InputError(f"prefix was computed for {prefix.x.shape[0]} faces, ws has {ws.shape[0]}")
        else:
            x, skip, pos = prefix.x, prefix.skip, prefix.pos
        fused = fused_modconv and not channels_last
        fp16_resolution = max(2 ** (self.log_size + 1 - num_fp16_res), 8) if num_fp16_res > 0 else None
        for kind, layer, idx, res in self._layers()[pos:]:
            if max_resolution is not None and res > max_resolution:
                break
            precision = (contextlib.nullcontext() if fp16_resolution is None  # a caller's autocast applies as it is
                         else torch.autocast(ws.device.type, dtype=fp16_dtype, enabled=res >= fp16_resolution))
            with precision:
                x, skip = self._run_layer(x, skip, kind, layer, idx, ws, noise_mode, fused=fused)
        return skip

    def forward(self, z: torch.Tensor, truncation_psi: float = 1.0, noise_mode: NoiseMode = "const") -> torch.Tensor:
        """z -> image. Shape: z ``[B, z_dim]`` -> ``[B, 3, H, W]``."""
        return self.synthesis(self.mapping(z, truncation_psi=truncation_psi), noise_mode=noise_mode)
