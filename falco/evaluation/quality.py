"""Image quality: FID and KID between the real and the anonymized aligned face crops.

Features are the 2048-d pool3 activations of the Inception-v3 used by TensorFlow's FID
(``pt_inception-2015-12-05-6726825d.pth``, the port by mseitzer/pytorch-fid, registry
``inception-fid``). :func:`fid_inception` rebuilds pytorch-fid's ``fid_inception_v3`` from
torchvision's Inception-v3 blocks with the TF-compatible patches (average pools that exclude
padding; max pool in the last block) and loads the file with ``torch.load(weights_only=True)``.
Input: RGB in [0, 1], resized bilinearly to 299 x 299, scaled to [-1, 1].

FID of fewer than 2,048 samples is biased upward and its covariance is rank-deficient (the
usual ``1e-6`` diagonal offset is added when ``sqrtm`` fails); KID (the unbiased polynomial-
kernel MMD of Binkowski et al., averaged over subsets) is the better number for small sets,
so the report gives both with the sample count.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from falco.errors import CheckpointError, InputError

__all__ = ["FIDInception", "fid_inception", "frechet_distance", "inception_features", "kernel_inception_distance"]


def _patched(cls, kind: str):
    """A torchvision Inception block class whose pooling branch behaves like TensorFlow's."""

    def pool(x: torch.Tensor) -> torch.Tensor:
        if kind == "max":
            return F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)

    class Block(cls):
        def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D401 - same outputs as upstream
            if isinstance(self, _tv().InceptionA):
                outs = [self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x)),
                        self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))]
            elif isinstance(self, _tv().InceptionC):
                b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
                bd = x
                for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3,
                              self.branch7x7dbl_4, self.branch7x7dbl_5):
                    bd = layer(bd)
                outs = [self.branch1x1(x), b7, bd]
            else:  # InceptionE
                b3 = self.branch3x3_1(x)
                b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
                bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
                bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
                outs = [self.branch1x1(x), b3, bd]
            return torch.cat(outs + [self.branch_pool(pool(x))], 1)

    Block.__name__ = f"FID{cls.__name__}{'Max' if kind == 'max' else ''}"
    return Block


def _tv():
    from torchvision.models import inception

    return inception


class FIDInception(nn.Module):
    """pytorch-fid's FID Inception-v3 up to the 2048-d average pool.

    Shape: ``[B, 3, H, W]`` in [0, 1] -> ``[B, 2048]``.
    """

    def __init__(self) -> None:
        super().__init__()
        tv = _tv()
        net = tv.Inception3(num_classes=1008, aux_logits=False, init_weights=False)
        A, C, E = _patched(tv.InceptionA, "avg"), _patched(tv.InceptionC, "avg"), tv.InceptionE
        net.Mixed_5b, net.Mixed_5c, net.Mixed_5d = A(192, 32), A(256, 64), A(288, 64)
        net.Mixed_6b, net.Mixed_6c = C(768, channels_7x7=128), C(768, channels_7x7=160)
        net.Mixed_6d, net.Mixed_6e = C(768, channels_7x7=160), C(768, channels_7x7=192)
        net.Mixed_7b, net.Mixed_7c = _patched(E, "avg")(1280), _patched(E, "max")(2048)
        self.net = net
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.net
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        x = 2 * x - 1
        x = F.max_pool2d(n.Conv2d_2b_3x3(n.Conv2d_2a_3x3(n.Conv2d_1a_3x3(x))), kernel_size=3, stride=2)
        x = F.max_pool2d(n.Conv2d_4a_3x3(n.Conv2d_3b_1x1(x)), kernel_size=3, stride=2)
        for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
                     "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c"):
            x = getattr(n, name)(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


def fid_inception(path: str | os.PathLike, device: str = "cpu") -> FIDInception:
    """Load ``pt_inception-2015-12-05-6726825d.pth`` into :class:`FIDInception`.

    Raises:
        CheckpointError: Unreadable, or its tensors do not fit the FID Inception.
    """
    with torch.device("meta"):  # every tensor is loaded below: skip the random initialisation
        model = FIDInception()
    model = model.to_empty(device="cpu")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(path, f"unreadable checkpoint: {exc}") from exc
    if not isinstance(sd, dict):
        raise CheckpointError(path, f"expected a state dict, got {type(sd).__name__}")
    sd = {k: v for k, v in sd.items() if not k.startswith("fc.")}  # the 1008-way classifier is unused
    expected = model.net.state_dict()
    missing = [k for k in expected if k not in sd and not k.startswith("fc.") and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in expected]
    if missing or unexpected:
        raise CheckpointError(path, f"not the FID Inception: missing {missing[:4]}, unexpected {unexpected[:4]}")
    for k, v in expected.items():
        if k in sd and tuple(sd[k].shape) != tuple(v.shape):
            raise CheckpointError(path, f"{k} has shape {tuple(sd[k].shape)}, expected {tuple(v.shape)}")
    for k in expected:
        if k.endswith("num_batches_tracked") and k not in sd:
            sd[k] = torch.zeros((), dtype=torch.long)
    model.net.load_state_dict(sd, strict=False)
    return model.to(device).eval()


def inception_features(model: nn.Module, crops: Sequence[np.ndarray], *, batch_size: int = 16,
                       device: str = "cpu") -> np.ndarray:
    """Pool3 features of uint8 RGB crops. Shape: ``N x [S, S, 3]`` -> ``[N, 2048]`` float64."""
    if len(crops) == 0:
        return np.zeros((0, 2048))
    out = []
    with torch.no_grad():
        for i in range(0, len(crops), batch_size):
            x = torch.from_numpy(np.stack(crops[i:i + batch_size])).permute(0, 3, 1, 2).float() / 255.0
            out.append(model(x.to(device)).double().cpu().numpy())
    return np.concatenate(out)


def _cov_factor(centered: np.ndarray) -> np.ndarray:
    """A factor ``F`` with ``F @ F.T`` = the sample covariance. Shape: ``[N, D]`` -> ``[D, min(N, D)]``-ish."""
    n, d = centered.shape
    if n <= d:
        return centered.T / np.sqrt(n - 1)
    lam, vec = np.linalg.eigh(centered.T @ centered / (n - 1))
    return vec * np.sqrt(np.clip(lam, 0.0, None))


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets. Shape: ``[N, D]``, ``[M, D]``.

    ``|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr(sqrt(S1 S2))``, where ``tr(sqrt(S1 S2))`` is the
    nuclear norm of ``F1.T @ F2`` for any factors ``S = F F.T`` -- exact for the rank-deficient
    covariances of small sets, and without the 2048 x 2048 ``sqrtm`` (pytorch-fid's route, which
    agrees to numerical precision when it converges).

    Raises:
        InputError: Fewer than 2 samples on a side, or different feature sizes.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or len(a) < 2 or len(b) < 2:
        raise InputError(f"FID needs two [N>=2, D] feature sets of equal D, got {a.shape} and {b.shape}")
    mu1, mu2 = a.mean(0), b.mean(0)
    ac, bc = a - mu1, b - mu2
    tr1, tr2 = (ac**2).sum() / (len(a) - 1), (bc**2).sum() / (len(b) - 1)
    tr_covmean = np.linalg.svd(_cov_factor(ac).T @ _cov_factor(bc), compute_uv=False).sum()
    diff = mu1 - mu2
    return float(max(0.0, diff @ diff + tr1 + tr2 - 2.0 * tr_covmean))


def kernel_inception_distance(a: np.ndarray, b: np.ndarray, *, subsets: int = 100, subset_size: int = 1000,
                              seed: int = 0) -> float:
    """Unbiased KID (cubic polynomial kernel), mean over random subsets. Shape: ``[N, D]``, ``[M, D]``."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    m = min(len(a), len(b), subset_size)
    if m < 2:
        raise InputError(f"KID needs at least 2 samples on each side, got {len(a)} and {len(b)}")
    d = a.shape[1]
    rng = np.random.default_rng(seed)
    total = 0.0
    for _ in range(subsets):
        x = a[rng.choice(len(a), m, replace=False)]
        y = b[rng.choice(len(b), m, replace=False)]
        kxx, kyy, kxy = ((x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3)
        total += ((kxx.sum() - np.trace(kxx)) + (kyy.sum() - np.trace(kyy))) / (m * (m - 1)) - 2 * kxy.mean()
    return float(total / subsets)


def random_fid_inception_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A random state dict in the pytorch-fid file layout (tests and offline runs; not for real scores)."""
    with torch.device("meta"):
        shapes = {k: (v.shape, v.dtype) for k, v in FIDInception().net.state_dict().items()}
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    for k, (shape, dtype) in shapes.items():
        if k.endswith("num_batches_tracked"):
            sd[k] = torch.zeros((), dtype=dtype)
        elif k.endswith(("running_var", "bn.weight")):
            sd[k] = torch.ones(shape)
        elif k.endswith(("running_mean", "bias")):
            sd[k] = torch.zeros(shape)
        else:
            fan_in = max(1, int(np.prod(shape[1:])))
            sd[k] = torch.randn(shape, generator=g) * (2.0 / fan_in) ** 0.5
    sd["fc.weight"], sd["fc.bias"] = torch.zeros(1008, 2048), torch.zeros(1008)
    return sd
