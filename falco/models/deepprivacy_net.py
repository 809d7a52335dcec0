"""DeepPrivacy v1's generator (hukkelas/DeepPrivacy ``DeepPrivacyV1``, ``configs/fdf/deep_privacy_v1.py``).

A U-Net at 128 px: the condition image (face box zeroed, [-1, 1]) goes through ``from_rgb``
and six encoder blocks (128 -> 4 px, average pooling); the decoder starts at 4 x 4 from the
encoder output concatenated with the 7 one-hot pose channels and ``z`` (``[32, 4, 4]``),
then at every resolution 8 .. 128 upsamples (nearest), concatenates the encoder features of
that resolution and the pose channels, and applies a 1x1 and two 3x3 convolutions. Every
convolution is weight-scaled (``ws_scale = gain / sqrt(fan_in)``, gain sqrt(2)) and followed by
LeakyReLU(0.2) and pixel normalisation, except ``to_rgb``. The mask input is carried along
but, with plain convolutions, does not enter the computation (as upstream).

State-dict keys match upstream's (``encoder.from_rgb.conv.0.weight``,
``decoder.skip_connection1.conv.layers.0.weight``, ``to_rgb.weight``...). The widths per
resolution (upstream 128 px: 128, 64: 256, 32 .. 4: 512) and ``z``'s channels are inferred from
the checkpoint, so a tiny model set can hold a small generator of the same layout.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from falco.errors import CheckpointError
from falco.models._checkpoint import (
    Source,
    build_empty,
    load_checked,
    load_checkpoint,
    source_name,
    strip_wrapper_prefixes,
    tensor,
    unwrap_state_dict,
)

__all__ = [
    "V1_CHANNELS",
    "DeepPrivacyV1",
    "infer_deepprivacy_kwargs",
    "load_generator",
    "pose_channel_images",
    "tiny_deepprivacy_state_dict",
]

#: Decoder width per resolution of the released model (``conv_size`` with ``model_size`` 512).
V1_CHANNELS: dict[int, int] = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256, 128: 128}
IMSIZE = 128
NUM_POSES = 7
_RES = (4, 8, 16, 32, 64, 128)  # block i of the decoder (and block 5 - i of the encoder) works at _RES[i]
#: What ``torch.load(weights_only=True)`` may rebuild DeepPrivacy's pickled config dicts as.
CONFIG_GLOBALS = [(OrderedDict, "deep_privacy.config.base.ConfigDict")]


class WSConv2d(nn.Conv2d):
    """Weight-scaled conv (upstream ``layers.Conv2d`` with ``wsconv=True``): ``w * gain / sqrt(fan_in)``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, gain: float = math.sqrt(2)):
        super().__init__(in_channels, out_channels, kernel_size, padding=(kernel_size - 1) // 2)
        self.ws_scale = gain / math.sqrt(in_channels * kernel_size * kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.ws_scale, self.bias, padding=self.padding)


class PixelNorm(nn.Module):
    """``x / sqrt(mean_c(x^2) + 1e-7)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt((x * x).mean(dim=1, keepdim=True) + 1e-7)


def _conv_act(cin: int, cout: int, k: int, gain: float) -> nn.Sequential:
    return nn.Sequential(WSConv2d(cin, cout, k, gain), nn.LeakyReLU(0.2), PixelNorm())


class ConvAct(nn.Module):
    """conv, LeakyReLU, pixel norm under ``conv`` (keys ``conv.0.*``): ``from_rgb`` and ``conv1x1``."""

    def __init__(self, cin: int, cout: int, k: int, gain: float):
        super().__init__()
        self.conv = _conv_act(cin, cout, k, gain)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class BasicBlock(nn.Module):
    """Convolutions under ``layers``: two 3x3 conv-act-norm (keys ``layers.0.*``, ``layers.3.*``), or one given."""

    def __init__(self, cin: int, cout: int, gain: float, layers: nn.Sequential | None = None):
        super().__init__()
        self.layers = layers if layers is not None else nn.Sequential(
            *_conv_act(cin, cout, 3, gain), *_conv_act(cout, cout, 3, gain))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class SkipConnection(nn.Module):
    """U-Net skip: a 1x1 conv-act-norm over ``[x, skip, pose]`` (keys ``conv.layers.0.*``)."""

    def __init__(self, cin: int, cout: int, gain: float):
        super().__init__()
        self.conv = BasicBlock(cin, cout, gain, layers=_conv_act(cin, cout, 1, gain))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def pose_channel_images(landmarks: torch.Tensor, resolutions: tuple[int, ...] = _RES) -> dict[int, torch.Tensor]:
    """One-hot keypoint images (upstream ``generate_pose_channel_images``).

    Keypoint ``k`` at ``(x, y)`` in [0, 1) lights pixel ``(floor(y r), floor(x r))`` of channel
    ``k`` at each resolution ``r``; keypoints outside [0, 1) are dropped.

    Shape: ``landmarks`` ``[B, 2K]`` (x0, y0, x1, y1, ...); returns ``{r: [B, K, r, r]}``.
    """
    b, n = landmarks.shape
    k = n // 2
    x, y = landmarks[:, 0::2].reshape(-1), landmarks[:, 1::2].reshape(-1)
    legal = (x >= 0) & (x < 1) & (y >= 0) & (y < 1)
    bi = torch.arange(b, device=landmarks.device).repeat_interleave(k)[legal]
    ki = torch.arange(k, device=landmarks.device).repeat(b)[legal]
    out = {}
    for r in resolutions:
        img = torch.zeros(b, k, r, r, dtype=landmarks.dtype, device=landmarks.device)
        img[bi, ki, (y[legal] * r).long(), (x[legal] * r).long()] = 1
        out[r] = img
    return out


class DeepPrivacyV1(nn.Module):
    """DeepPrivacy v1 generator.

    Args:
        channels: Decoder width per resolution 4 .. 128 (upstream :data:`V1_CHANNELS`).
        z_channels: Channels of the latent ``z`` (upstream 32; ``z`` is ``[z_channels, 4, 4]``).
        num_poses: Keypoints (7: nose, eyes, ears, shoulders).
        gain: Weight-scaling gain (sqrt(2) in the v1 config).
    """

    def __init__(self, channels: Mapping[int, int] | None = None, z_channels: int = 32, num_poses: int = NUM_POSES,
                 gain: float = math.sqrt(2)):
        super().__init__()
        c = dict(V1_CHANNELS if channels is None else channels)
        self.channels, self.z_shape, self.num_poses = c, (z_channels, 4, 4), num_poses
        self.current_imsize = IMSIZE
        enc = nn.Module()
        enc.from_rgb = ConvAct(3, c[128], 1, gain)
        cin = c[128]
        for i in (5, 4, 3, 2, 1, 0):  # encoder block i works at _RES[i], outputs the decoder width one level down
            cout = c[_RES[i - 1]] if i else c[4]
            setattr(enc, f"basic_block{i}", BasicBlock(cin, cout, gain))
            cin = cout
        self.encoder = enc
        dec = nn.Module()
        dec.conv1x1 = ConvAct(c[4] + num_poses + z_channels, c[4], 1, gain)
        dec.basic_block0 = BasicBlock(c[4], c[4], gain)
        for i in range(1, 6):
            prev = c[_RES[i - 1]]
            setattr(dec, f"skip_connection{i}", SkipConnection(2 * prev + num_poses, prev, gain))
            setattr(dec, f"basic_block{i}", BasicBlock(prev, c[_RES[i]], gain))
        self.decoder = dec
        self.to_rgb = WSConv2d(c[128], 3, 1, gain)

    def generate_latent_variable(self, batch: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """``z ~ N(0, I)``. Shape: ``[batch, *z_shape]``."""
        return torch.randn(batch, *self.z_shape, device=device)

    def forward(self, condition: torch.Tensor, mask: torch.Tensor, landmarks: torch.Tensor,
                z: torch.Tensor | None = None) -> torch.Tensor:
        """Generate faces.

        Shape:
            ``condition`` ``[B, 3, 128, 128]`` in [-1, 1] with the face region zeroed; ``mask``
            ``[B, 1, 128, 128]`` (1 = keep; carried but unused, as upstream); ``landmarks``
            ``[B, 14]`` in [0, 1]; ``z`` ``[B, *z_shape]`` (None: sampled); returns
            ``[B, 3, 128, 128]`` in about [-1, 1].
        """
        del mask  # plain convolutions ignore it (upstream passes it through untouched)
        if z is None:
            z = self.generate_latent_variable(condition.shape[0], condition.device)
        pose = pose_channel_images(landmarks.to(condition.dtype))
        enc, dec = self.encoder, self.decoder
        x = enc.from_rgb(condition)
        skips = {}
        for i in (5, 4, 3, 2, 1, 0):
            x = getattr(enc, f"basic_block{i}")(x)
            skips[_RES[i]] = x
            if i:
                x = F.avg_pool2d(x, 2)
        x = dec.conv1x1(torch.cat((x, pose[4], z), dim=1))
        x = dec.basic_block0(x)
        for i in range(1, 6):
            r = _RES[i]
            x = F.interpolate(x, scale_factor=2, mode="nearest")
            x = getattr(dec, f"skip_connection{i}")(torch.cat((x, skips[r], pose[r]), dim=1))
            x = getattr(dec, f"basic_block{i}")(x)
        return self.to_rgb(x)


def infer_deepprivacy_kwargs(state: Mapping[str, Any], source: Any = "<state dict>") -> dict[str, Any]:
    """``channels``, ``z_channels`` and ``num_poses`` from checkpoint shapes.

    Raises:
        CheckpointError: A needed tensor is missing or the shapes are inconsistent.
    """
    channels = {4: int(tensor(state, "decoder.basic_block0.layers.3.weight", source, ndim=4).shape[0])}
    for i in range(1, 6):
        channels[_RES[i]] = int(tensor(state, f"decoder.basic_block{i}.layers.3.weight", source, ndim=4).shape[0])
    skip_in = int(tensor(state, "decoder.skip_connection1.conv.layers.0.weight", source, ndim=4).shape[1])
    num_poses = skip_in - 2 * channels[4]
    z_channels = int(tensor(state, "decoder.conv1x1.conv.0.weight", source, ndim=4).shape[1]) - channels[4] - num_poses
    if num_poses < 1 or z_channels < 1:
        raise CheckpointError(source_name(source), f"inconsistent DeepPrivacy v1 shapes: {num_poses} pose "
                                                   f"channels, {z_channels} z channels")
    return {"channels": channels, "z_channels": z_channels, "num_poses": num_poses}


def _unwrap(ckpt: Any, source: Any) -> dict[str, Any]:
    ckpt = unwrap_state_dict(ckpt, source, keys=("running_average_generator", "G", "generator", "state_dict"))
    if isinstance(ckpt.get("parameters"), Mapping):  # ProgressiveBase.state_dict()
        ckpt = ckpt["parameters"]
    return strip_wrapper_prefixes(ckpt, ("module.", "network.", "deepprivacy."))


def load_generator(source: Source, *, device: str | torch.device = "cpu") -> DeepPrivacyV1:
    """Load the v1 generator from upstream's checkpoint (``running_average_generator`` is used) or a state dict.

    The checkpoint's pickled ``deep_privacy.config.base.ConfigDict`` objects (if any) are read
    as plain dicts by ``torch.load(weights_only=True)``; nothing from the file is executed.

    Raises:
        CheckpointError: Unreadable file, missing/unexpected keys or wrong shapes (the message
            names the file and the key).
    """
    with torch.serialization.safe_globals(CONFIG_GLOBALS):
        ckpt = load_checkpoint(source)
    state = _unwrap(ckpt, source)
    kwargs = infer_deepprivacy_kwargs(state, source)
    G = build_empty(lambda: DeepPrivacyV1(**kwargs))
    load_checked(G, state, source, what="DeepPrivacy v1 generator")
    return G.to(device).eval().requires_grad_(False)


def tiny_deepprivacy_state_dict(seed: int = 0, *, width: int = 8, z_channels: int = 8) -> dict[str, torch.Tensor]:
    """A small random v1 generator's state dict (upstream key layout), for tiny model sets."""
    channels = {4: 2 * width, 8: 2 * width, 16: 2 * width, 32: 2 * width, 64: width, 128: width}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        G = DeepPrivacyV1(channels, z_channels=z_channels)
        for p in G.parameters():
            nn.init.normal_(p) if p.ndim > 1 else nn.init.zeros_(p)
    return {k: v.detach().clone() for k, v in G.state_dict().items()}
