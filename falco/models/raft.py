"""RAFT optical flow (Teed and Deng, ECCV 2020) for tOF: torchvision's ``raft_small`` on the model set's weights.

The network is torchvision's own (``torchvision.models.optical_flow.raft_small``); falco reads the
weights file with ``weights_only=True`` and checks its keys and shapes before loading. Inputs are
RGB frames scaled to [-1, 1] as ``Raft_Small_Weights.C_T_V2.transforms()`` does, padded by edge
replication (right and bottom) to a multiple of 8 on each side (RAFT's feature stride) and to at
least 128 px (its correlation pyramid), and the flow of the last refinement is cropped back to the frame.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from falco.errors import InputError
from falco.models._checkpoint import load_checked, load_checkpoint, unwrap_state_dict

__all__ = ["RaftFlow", "load_raft", "raft_from_state_dict"]


def _net() -> torch.nn.Module:
    from torchvision.models.optical_flow import raft_small

    return raft_small(weights=None, progress=False)


#: RAFT's correlation pyramid needs feature maps of 16 px or more, at 1/8 of the input: 128 px sides.
MIN_SIDE = 128


def _padded(n: int) -> int:
    """A side padded to a multiple of 8, at least :data:`MIN_SIDE`."""
    return max(MIN_SIDE, n + (-n % 8))


def raft_from_state_dict(state: Mapping[str, Any], *, source: str = "<state dict>") -> torch.nn.Module:
    """torchvision's ``raft_small`` with ``state`` loaded.

    Raises:
        CheckpointError: Missing, unexpected or misshaped tensors (the message names ``source``).
    """
    return load_checked(_net(), state, source, what="RAFT-small").eval().requires_grad_(False)


class RaftFlow:
    """``flow(prev, cur)``: RAFT's optical flow from ``prev`` to ``cur``, as :func:`falco.evaluation.temporal.flow`.

    Args:
        net: A loaded ``raft_small`` (:func:`load_raft`).
        device: Where it runs.
        updates: Iterative refinements (torchvision's default: 12).
    """

    name = "raft-small"

    def __init__(self, net: torch.nn.Module, *, device: str | torch.device = "cpu", updates: int = 12) -> None:
        self.net = net.to(device)
        self.device = torch.device(device)
        self.updates = int(updates)

    def _tensor(self, frame: np.ndarray) -> torch.Tensor:
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise InputError(f"RAFT takes [H, W, 3] uint8 RGB frames, got {frame.dtype} {frame.shape}")
        x = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)[None].float()
        return (x / 127.5 - 1.0).to(self.device)

    @torch.no_grad()
    def __call__(self, prev: np.ndarray, cur: np.ndarray) -> np.ndarray:
        """Shape: ``[H, W, 3]`` uint8 twice -> ``[H, W, 2]`` float32 (x, y displacement in pixels)."""
        if prev.shape != cur.shape:
            raise InputError(f"RAFT: frames of different sizes {prev.shape} and {cur.shape}")
        h, w = prev.shape[:2]
        pad = (0, _padded(w) - w, 0, _padded(h) - h)  # left, right, top, bottom
        a, b = (F.pad(self._tensor(f), pad, mode="replicate") for f in (prev, cur))
        out = self.net(a, b, num_flow_updates=self.updates)[-1][0, :, :h, :w]
        return out.permute(1, 2, 0).float().cpu().numpy()


def load_raft(models: str | os.PathLike | None = None, *, device: str | torch.device = "cpu") -> RaftFlow:
    """RAFT from the model set (``raft-small``: ``falco models download raft-small``).

    Raises:
        ModelNotFoundError: Not installed (the message says how to install it).
        ChecksumError, CheckpointError: A corrupt or foreign file.
    """
    from falco.pretrained.modelset import resolve_model

    path = resolve_model("raft-small", models)
    state = unwrap_state_dict(load_checkpoint(path), path, keys=())
    return RaftFlow(raft_from_state_dict(state, source=os.fspath(path)), device=device)
