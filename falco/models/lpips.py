"""LPIPS (Zhang et al., CVPR 2018), the AlexNet variant v0.1: a perceptual distance between images.

Our own module, written from richzhang/PerceptualSimilarity (``lpips/lpips.py``,
``lpips/pretrained_networks.py``): the images in [-1, 1] are shifted and scaled
(``ScalingLayer``), AlexNet's five ReLU outputs are taken (torchvision's ``alexnet().features``
cut after layers 1, 4, 7, 9 and 11), each is unit-normalised along the channels, the squared
differences are weighted per channel by a 1x1 convolution (``lin0..lin4``, no bias) and either
averaged over space (one distance per image) or upsampled bilinearly to the input size and
summed (a distance map, ``spatial=True``; what the per-part LPIPS of ``eval-attributes`` averages
inside each part). Parity with the ``lpips`` package: ``tests/test_lpips.py``.

Two files, both in the registry: torchvision's ImageNet AlexNet (``lpips-alexnet``,
``alexnet-owt-7be5be79.pth``) and the v0.1 linear weights (``lpips-alex-lin``, ``alex.pth``,
also shipped inside the PyPI ``lpips`` wheel). Both are plain state dicts read with
``weights_only=True``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from falco.errors import CheckpointError, InputError

__all__ = ["LPIPS", "load_lpips", "lpips_from_state_dicts"]

#: ``ScalingLayer`` of the reference: images in [-1, 1] -> ``(x - shift) / scale``.
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
#: Channels of AlexNet's five taps.
CHANNELS = (64, 192, 384, 256, 256)
#: The taps: ``features[start:end]`` of torchvision's AlexNet, one slice per ReLU output.
SLICES = ((0, 2), (2, 5), (5, 8), (8, 10), (10, 12))


def _alexnet_features() -> nn.Sequential:
    """torchvision's ``alexnet().features`` (same layers, same state-dict keys ``features.N.*``)."""
    return nn.Sequential(
        nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(inplace=False), nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(inplace=False), nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=False),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=False),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=False), nn.MaxPool2d(3, 2),
    )


class _Lin(nn.Module):
    """``NetLinLayer``: dropout (inactive in eval) then a 1x1 convolution to one channel, no bias."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class LPIPS(nn.Module):
    """LPIPS v0.1 with AlexNet (see the module docstring). Frozen, in eval mode, once loaded."""

    def __init__(self) -> None:
        super().__init__()
        self.features = _alexnet_features()
        self.lins = nn.ModuleList([_Lin(c) for c in CHANNELS])
        self.register_buffer("shift", torch.tensor(SHIFT)[None, :, None, None], persistent=False)
        self.register_buffer("scale", torch.tensor(SCALE)[None, :, None, None], persistent=False)

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = (x - self.shift) / self.scale
        taps = []
        for start, end in SLICES:
            for layer in self.features[start:end]:
                x = layer(x)
            taps.append(x)
        return taps

    def forward(self, a: torch.Tensor, b: torch.Tensor, *, spatial: bool = False) -> torch.Tensor:
        """The distance between ``a`` and ``b`` (RGB in [-1, 1]).

        Shape:
            ``a``, ``b``: ``[B, 3, H, W]`` -> ``[B]``, or ``[B, H, W]`` with ``spatial=True``.
        """
        if not isinstance(a, torch.Tensor) or a.ndim != 4 or a.shape[1] != 3 or a.shape != getattr(b, "shape", None):
            raise InputError(f"LPIPS takes two [B, 3, H, W] tensors of one shape, got "
                             f"{list(getattr(a, 'shape', []))} and {list(getattr(b, 'shape', []))}")
        total = None
        for lin, fa, fb in zip(self.lins, self._taps(a), self._taps(b)):
            diff = (_unit(fa) - _unit(fb)) ** 2
            d = lin(diff)
            d = (F.interpolate(d, size=a.shape[-2:], mode="bilinear", align_corners=False) if spatial
                 else d.mean(dim=(2, 3), keepdim=True))
            total = d if total is None else total + d
        return total[:, 0] if spatial else total.flatten()


def _unit(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """The reference's ``normalize_tensor``: divide by the L2 norm along the channels (+ eps)."""
    return x / (torch.sqrt((x * x).sum(dim=1, keepdim=True)) + eps)


def lpips_from_state_dicts(backbone: Mapping[str, Any], lin: Mapping[str, Any], *, source: str = "<state dicts>") -> LPIPS:
    """An :class:`LPIPS` from torchvision's AlexNet state dict (``features.*``; ``classifier.*``
    ignored) and the v0.1 linear weights (``lin0.model.1.weight`` .. ``lin4``).

    Raises:
        CheckpointError: Missing or misshaped tensors (the message names ``source``).
    """
    net = LPIPS()
    state = {k: v for k, v in backbone.items() if k.startswith("features.")}
    state.update({k.replace("lin", "lins.", 1): v for k, v in lin.items() if k.startswith("lin")})
    expected = net.state_dict()
    missing = sorted(set(expected) - set(state))
    bad = sorted(k for k in set(expected) & set(state)
                 if not isinstance(state[k], torch.Tensor) or state[k].shape != expected[k].shape)
    if missing or bad:
        raise CheckpointError(source, f"not LPIPS AlexNet weights (missing {missing[:3]}, misshaped {bad[:3]})")
    net.load_state_dict({k: state[k] for k in expected})
    return net.eval().requires_grad_(False)


def _read(path: str | os.PathLike) -> Mapping[str, Any]:
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a corrupt or foreign file: one line naming it
        raise CheckpointError(os.fspath(path), f"cannot read as a state dict ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, Mapping):
        raise CheckpointError(os.fspath(path), f"expected a state dict, got {type(data).__name__}")
    return data


def load_lpips(models: str | os.PathLike | None = None, *, device: str | torch.device = "cpu") -> LPIPS:
    """LPIPS from the model set: ``lpips-alexnet`` and ``lpips-alex-lin`` (the latter is also found
    inside an installed ``lpips`` package).

    Raises:
        ModelNotFoundError: A file is missing (the message says ``falco models download ...``).
        ChecksumError, CheckpointError: A corrupt or foreign file.
    """
    from falco.pretrained.modelset import resolve_model

    backbone, lin = resolve_model("lpips-alexnet", models), resolve_model("lpips-alex-lin", models)
    net = lpips_from_state_dicts(_read(backbone), _read(lin), source=f"{backbone} + {lin}")
    return net.to(device)
