"""AnonyGAN's generator (Fodark/anonygan ``src/models/generator.py`` ``Generator``), same key layout.

AnonyGAN (Dall'Asen et al., ICIAP 2021) redraws the face of a *source* image with the
appearance of a *condition* face, keeping the source's pose. Two streams run side by side at
a quarter of the input size (220 x 180 -> 55 x 45):

- stream 1, the image: ``cat(condition, source * (1 - mask))`` (6 channels in [-1, 1]; the
  3-channel variant takes the condition alone), 7x7 conv + two stride-2 convs;
- stream 2, the pose: 136 one-hot landmark maps (68 condition points, then 68 source points;
  58 for the 29-point variant), optionally reweighted per channel by an ECA layer (``ch_att``,
  the paper's landmark attention), then the same convs.

Six ``GraphBlock``s exchange information: each runs a conv block per stream, a GloRe graph
unit (two cross-projected graphs of 64 nodes over the halves of stream 2's channels), gates
stream 1's residual with ``sigmoid(stream 2)`` and feeds stream 1 back into stream 2. Stream
1 is decoded (two transposed convs + 7x7 conv + tanh) into ``raw``, and three transposed convs
of the same features give a 1-channel blend mask ``att``; the generator returns
``clamp(raw * att + masked_source * (1 - att), -1, 1)`` (the 3-channel variant blends with the
condition, as upstream).

Upstream hard-codes the GloRe widths (128 in, 64 nodes) and ``conv_att1`` (256 -> 128), which
only fit ``ngf = 64``; here they are ``2 ngf``, ``ngf`` and ``4 ngf -> 2 ngf``, identical at 64,
so that a tiny model set can hold a small generator of the same layout. The architecture is
read from the checkpoint's shapes: ``ngf``, the number of blocks, 6 or 3 image channels, 136 or
58 landmark channels, and whether ``ch_att`` is there.

:func:`encode_landmarks` and :func:`face_mask` build the other two inputs exactly as
upstream's test-time path (``create_landmark_and_mask``): one pixel per point, and OpenCV 4.10's
``fillPoly`` of the polygon (x0, y19), jaw points 0-16, (x16, y24), re-implemented here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from falco.errors import CheckpointError, InputError
from falco.models._checkpoint import (Source, load_checked, load_checkpoint, source_name, strip_prefix,
                                      strip_wrapper_prefixes, tensor, unwrap_state_dict)

__all__ = [
    "FRAME_SIZE",
    "LEGAL_29",
    "LIGHTNING_GLOBALS",
    "Generator",
    "encode_landmarks",
    "face_mask",
    "fill_poly",
    "infer_anonygan_kwargs",
    "load_generator",
    "mask_polygon",
    "tiny_anonygan_state_dict",
]

#: The generator's input size ``(height, width)``: CelebA's aligned 178 x 218 resized to 180 x 220.
FRAME_SIZE: tuple[int, int] = (220, 180)
#: The dlib points the 29-point variant keeps (jaw, nose bridge, inner lips), upstream's ``legal_lndmk``.
LEGAL_29: tuple[int, ...] = (*range(17), 27, 28, 29, 30, *range(60, 68))
#: Classes a PyTorch Lightning checkpoint pickles beside the weights (read as inert stand-ins).
LIGHTNING_GLOBALS: tuple[str, ...] = ("pytorch_lightning.", "lightning.", "lightning_fabric.", "argparse.Namespace")


# ------------------------------------------------------------------------- modules
class EcaLayer(nn.Module):
    """ECA channel attention (upstream ``eca_layer``): a 3-tap conv over the channel means, sigmoid gate."""

    def __init__(self, k_size: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 1, kernel_size=k_size, padding=(k_size - 1) // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.mean(dim=(2, 3), keepdim=True)  # AdaptiveAvgPool2d(1)
        y = self.conv(y.squeeze(-1).transpose(-1, -2)).transpose(-1, -2).unsqueeze(-1)
        return x * torch.sigmoid(y)


class Gcn(nn.Module):
    """One graph convolution (upstream ``GCN``): a 1x1 conv over nodes with a residual, ReLU, a 1x1 conv over states."""

    def __init__(self, num_state: int, num_node: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(num_node, num_node, kernel_size=1)
        self.conv2 = nn.Conv1d(num_state, num_state, kernel_size=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Shape: ``[B, num_state, num_node]`` -> same."""
        h = self.conv1(x.transpose(1, 2)).transpose(1, 2) + x
        return self.conv2(torch.relu(h))


class GloReUnit(nn.Module):
    """Upstream's ``GloRe_Unit_2D`` (no normalisation): two graphs, each projected by the other half's features.

    The input's channels are split in two halves of ``num_input``; half 1's states are projected
    with half 2's projection map and vice versa, reasoned over by ``gcn1`` / ``gcn2``, projected
    back, extended and added to their half through the shared BatchNorm ``blocker``.
    """

    def __init__(self, num_input: int, num_mid: int) -> None:
        super().__init__()
        num_states, num_nodes = 2 * num_mid, num_mid
        self.conv_state = nn.Conv2d(num_input, num_states, kernel_size=1)
        self.conv_proj = nn.Conv2d(num_input, num_nodes, kernel_size=1)
        self.gcn1 = Gcn(num_states, num_nodes)
        self.gcn2 = Gcn(num_states, num_nodes)
        self.conv_extend = nn.Conv2d(num_states, num_input, kernel_size=1, bias=False)
        self.blocker = nn.BatchNorm2d(num_input, eps=1e-4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Shape: ``[B, 2 num_input, H, W]`` -> same."""
        b, c, h, w = x.shape
        x1, x2 = x[:, : c // 2], x[:, c // 2 :]
        state1 = self.conv_state(x1).flatten(2)
        state2 = self.conv_state(x2).flatten(2)
        proj1 = self.conv_proj(x2).flatten(2)  # the other half's projection, as upstream
        proj2 = self.conv_proj(x1).flatten(2)
        rel1 = self.gcn1(torch.bmm(state1, proj1.transpose(1, 2)))
        rel2 = self.gcn2(torch.bmm(state2, proj2.transpose(1, 2)))
        out1 = torch.bmm(rel1, proj1).view(b, -1, h, w)
        out2 = torch.bmm(rel2, proj2).view(b, -1, h, w)
        out1 = x1 + self.blocker(self.conv_extend(out1))
        out2 = x2 + self.blocker(self.conv_extend(out2))
        return torch.cat((out1, out2), 1)


def _conv_block(dim_in: int, dim: int, *, gate: bool) -> nn.Sequential:
    """Upstream's ``build_conv_block``: pad-conv-BN-ReLU-dropout-pad-conv(-BN unless ``gate``)."""
    layers: list[nn.Module] = [nn.ReflectionPad2d(1), nn.Conv2d(dim_in, dim_in, 3, bias=False),
                               nn.BatchNorm2d(dim_in), nn.ReLU(True), nn.Dropout(0.5), nn.ReflectionPad2d(1),
                               nn.Conv2d(dim_in, dim, 3, bias=False)]
    if not gate:
        layers.append(nn.BatchNorm2d(dim))
    return nn.Sequential(*layers)


class GraphBlock(nn.Module):
    """Upstream's ``GraphBlock``: stream 1 residual gated by the graph-reasoned stream 2, which gets stream 1 back."""

    def __init__(self, dim: int, cated_stream2: bool) -> None:
        super().__init__()
        self.conv_block_stream1 = _conv_block(dim, dim, gate=False)
        self.conv_block_stream2 = _conv_block(2 * dim if cated_stream2 else dim, dim, gate=True)
        self.gcn = GloReUnit(dim // 2, dim // 4)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x2_out = self.gcn(self.conv_block_stream2(x2))
        out = x1 + self.conv_block_stream1(x1) * torch.sigmoid(x2_out)
        return out, torch.cat((x2_out, out), 1)


def _down(in_channels: int, ngf: int) -> nn.Sequential:
    layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(in_channels, ngf, 7, bias=False),
                               nn.BatchNorm2d(ngf), nn.ReLU(True)]
    for mult in (1, 2):
        layers += [nn.Conv2d(ngf * mult, ngf * mult * 2, 3, stride=2, padding=1, bias=False),
                   nn.BatchNorm2d(ngf * mult * 2), nn.ReLU(True)]
    return nn.Sequential(*layers)


def _up(in_channels: int, out_channels: int, *, bias: bool = False) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(in_channels, out_channels, 3, stride=2, padding=1, output_padding=1, bias=bias)


class Generator(nn.Module):
    """AnonyGAN's generator (upstream key names; see the module docstring).

    Args:
        ngf: Width of the first conv (upstream: 64).
        n_blocks: Number of GraphBlocks (upstream: 6).
        ch_input: 6 (condition + masked source) or 3 (condition only).
        use_ch_att: Whether the landmark maps go through the ECA layer ``ch_att``.
        reduced_landmarks: 29 points per face (58 landmark channels) instead of 68 (136).
    """

    def __init__(self, ngf: int = 64, n_blocks: int = 6, ch_input: int = 6, use_ch_att: bool = True,
                 reduced_landmarks: bool = False) -> None:
        super().__init__()
        if ch_input not in (3, 6):
            raise InputError(f"ch_input must be 6 or 3, got {ch_input!r}")
        if ngf < 2 or ngf % 2 or n_blocks < 1:
            raise InputError(f"ngf must be an even int >= 2 and n_blocks >= 1, got {ngf!r}, {n_blocks!r}")
        self.ngf, self.n_blocks, self.ch_input = ngf, n_blocks, ch_input
        self.use_ch_att, self.reduced_landmarks = use_ch_att, reduced_landmarks
        self.landmark_channels = 2 * (len(LEGAL_29) if reduced_landmarks else 68)
        if use_ch_att:
            self.ch_att = EcaLayer()
        self.stream1_down = _down(ch_input, ngf)
        self.stream2_down = _down(self.landmark_channels, ngf)
        self.att = nn.ModuleList(GraphBlock(4 * ngf, cated_stream2=i > 0) for i in range(n_blocks))
        self.stream1_up = nn.Sequential(_up(4 * ngf, 2 * ngf), nn.BatchNorm2d(2 * ngf), nn.ReLU(True),
                                        _up(2 * ngf, ngf), nn.BatchNorm2d(ngf), nn.ReLU(True),
                                        nn.ReflectionPad2d(3), nn.Conv2d(ngf, 3, 7), nn.Tanh())
        self.conv_att1 = _up(4 * ngf, 2 * ngf)
        self.conv_att2 = _up(2 * ngf, ngf)
        self.conv_att3 = nn.ConvTranspose2d(ngf, 1, kernel_size=1, bias=False)

    @property
    def init_kwargs(self) -> dict[str, Any]:
        """Constructor arguments that rebuild this architecture."""
        return dict(ngf=self.ngf, n_blocks=self.n_blocks, ch_input=self.ch_input, use_ch_att=self.use_ch_att,
                    reduced_landmarks=self.reduced_landmarks)

    def parts(self, image_input: torch.Tensor, landmark_input: torch.Tensor) -> dict[str, torch.Tensor]:
        """The generator's output and its two branches.

        Shape:
            ``image_input`` ``[B, ch_input, H, W]`` in [-1, 1] (H, W multiples of 4);
            ``landmark_input`` ``[B, landmark_channels, H, W]``; returns ``output``, ``raw``
            ``[B, 3, H, W]`` and ``att`` ``[B, 1, H, W]``.
        """
        if image_input.ndim != 4 or image_input.shape[1] != self.ch_input:
            raise InputError(f"image_input must be [B, {self.ch_input}, H, W], got {list(image_input.shape)}")
        if landmark_input.ndim != 4 or landmark_input.shape[1] != self.landmark_channels \
                or landmark_input.shape[2:] != image_input.shape[2:] or landmark_input.shape[0] != image_input.shape[0]:
            raise InputError(f"landmark_input must be [B, {self.landmark_channels}, H, W] like image_input, "
                             f"got {list(landmark_input.shape)}")
        x2 = self.ch_att(landmark_input) if self.use_ch_att else landmark_input
        x1 = self.stream1_down(image_input)
        x2 = self.stream2_down(x2)
        for block in self.att:
            x1, x2 = block(x1, x2)
        raw = self.stream1_up(x1)
        att = torch.sigmoid(self.conv_att3(self.conv_att2(self.conv_att1(x1))))
        base = image_input[:, 3:] if self.ch_input == 6 else image_input
        return {"output": torch.clamp(raw * att + base * (1 - att), -1, 1), "raw": raw, "att": att}

    def forward(self, image_input: torch.Tensor, landmark_input: torch.Tensor) -> torch.Tensor:
        """The composited face, as upstream's ``G([image_input, landmark_input])``. Shape: ``[B, 3, H, W]``."""
        return self.parts(image_input, landmark_input)["output"]


# --------------------------------------------------------------------- checkpoints
def infer_anonygan_kwargs(state: Mapping[str, Any], source: Any = "<state dict>") -> dict[str, Any]:
    """Generator kwargs from checkpoint shapes (``ngf``, ``n_blocks``, ``ch_input``, ``use_ch_att``, ``reduced_landmarks``).

    Raises:
        CheckpointError: A tensor needed for the inference is missing or has an unexpected shape.
    """
    name = source_name(source)
    w1 = tensor(state, "stream1_down.1.weight", source, ndim=4)
    w2 = tensor(state, "stream2_down.1.weight", source, ndim=4)
    ch_input, lm_channels = int(w1.shape[1]), int(w2.shape[1])
    if ch_input not in (3, 6):
        raise CheckpointError(name, f"stream1_down.1.weight takes {ch_input} image channels; AnonyGAN takes 6 or 3")
    if lm_channels not in (136, 2 * len(LEGAL_29)):
        raise CheckpointError(name, f"stream2_down.1.weight takes {lm_channels} landmark channels; "
                                    f"AnonyGAN takes 136 (68 points) or {2 * len(LEGAL_29)} (29 points)")
    n_blocks = 0
    while f"att.{n_blocks}.gcn.conv_state.weight" in state:
        n_blocks += 1
    if n_blocks == 0:
        raise CheckpointError(name, "no GraphBlock found (missing att.0.gcn.conv_state.weight)")
    return {"ngf": int(w1.shape[0]), "n_blocks": n_blocks, "ch_input": ch_input,
            "use_ch_att": "ch_att.conv.weight" in state, "reduced_landmarks": lm_channels != 136}


def generator_state(ckpt: Any, source: Any) -> dict[str, Any]:
    """The generator's tensors in a checkpoint: a whole Lightning checkpoint (``state_dict['G.*']``,
    discriminators ignored), a Lightning ``state_dict``, or a bare generator state dict.

    Raises:
        CheckpointError: Not a mapping.
    """
    state = strip_wrapper_prefixes(unwrap_state_dict(ckpt, source), ("module.", "anonygan."))
    if any(isinstance(k, str) and k.startswith("G.") for k in state):
        return strip_prefix(state, "G.")  # D_gan.*, D_pose.* (D_gan2.*, D_id.*) are dropped
    return dict(state)


def load_generator(source: Source, *, device: str | torch.device = "cpu") -> Generator:
    """Load AnonyGAN's generator from ``anonygan.ckpt`` (a PyTorch Lightning checkpoint), a path or a state dict.

    Nothing is executed from the file: it is read with ``torch.load(weights_only=True)``; the
    objects Lightning pickles beside the weights (:data:`LIGHTNING_GLOBALS`) become inert stand-ins.
    The architecture is inferred from the tensor shapes; the module is returned in eval mode.

    Raises:
        CheckpointError: Unreadable file, missing/unexpected keys or wrong shapes (the message
            names the file and the key).
    """
    state = generator_state(load_checkpoint(source, inert_globals=LIGHTNING_GLOBALS), source)
    G = Generator(**infer_anonygan_kwargs(state, source))
    load_checked(G, state, source, what="AnonyGAN generator")
    return G.to(device).eval().requires_grad_(False)


def tiny_anonygan_state_dict(seed: int = 0, *, ngf: int = 4, n_blocks: int = 2) -> dict[str, torch.Tensor]:
    """A small random AnonyGAN generator's state dict (upstream layout, 136 landmark channels, ECA),
    with its BatchNorm statistics set from a forward pass of random inputs, for tiny model sets."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        G = Generator(ngf=ngf, n_blocks=n_blocks)
        for block in G.att:  # upstream: "should be zero initialized"; small keeps the graph path alive
            nn.init.constant_(block.gcn.blocker.weight, 0.1)
        bns = [m for m in G.modules() if isinstance(m, nn.BatchNorm2d)]
        for m in bns:
            m.momentum = None  # cumulative average over the calibration batch
        image = torch.rand(2, 6, *FRAME_SIZE) * 2 - 1
        lm = torch.stack([torch.randint(0, FRAME_SIZE[1], (2, 2, 68)), torch.randint(0, FRAME_SIZE[0], (2, 2, 68))], -1)
        with torch.no_grad():
            G.train()(image, encode_landmarks(lm[:, 0], lm[:, 1]))
        for m in bns:
            m.momentum = 0.1
            m.num_batches_tracked.zero_()
    return {k: v.detach().clone() for k, v in G.eval().state_dict().items()}


# ------------------------------------------------------------------- the inputs
def _points(landmarks: Any, name: str, size: tuple[int, int]) -> np.ndarray:
    """Landmarks as int64 ``[B, 68, 2]`` (x, y), rounded and clipped into the frame."""
    lm = landmarks.detach().cpu().numpy() if isinstance(landmarks, torch.Tensor) else np.asarray(landmarks)
    if lm.ndim == 2:
        lm = lm[None]
    if lm.ndim != 3 or lm.shape[1:] != (68, 2) or not np.isfinite(lm).all():
        raise InputError(f"{name} must be finite [B, 68, 2] or [68, 2] (x, y) points, got shape {list(lm.shape)}")
    height, width = size
    lm = np.rint(lm).astype(np.int64)
    return np.stack([np.clip(lm[..., 0], 0, width - 1), np.clip(lm[..., 1], 0, height - 1)], -1)


def _check_size(size: object) -> tuple[int, int]:
    if not (isinstance(size, Sequence) and len(size) == 2 and all(isinstance(v, (int, np.integer)) and v > 0
                                                                  for v in size)):
        raise InputError(f"size must be (height, width) positive ints, got {size!r}")
    return int(size[0]), int(size[1])


def encode_landmarks(landmarks_condition: Any, landmarks_source: Any, size: tuple[int, int] = FRAME_SIZE, *,
                     reduced: bool = False) -> torch.Tensor:
    """The generator's landmark input, as upstream's ``create_landmark_and_mask`` (test-time path).

    Channel ``i`` holds 1.0 at the pixel ``[y, x]`` of dlib point ``i`` and 0 elsewhere: the 68
    condition points, then the 68 source points (``reduced``: the 29 points of
    :data:`LEGAL_29` of each). Coordinates are rounded to the nearest pixel and clipped into
    the frame (upstream's are integers already; one outside the frame would fail there).

    Shape:
        ``landmarks_*`` ``[B, 68, 2]`` (or ``[68, 2]``) ``(x, y)`` in the ``size = (H, W)``
        frame; returns ``[B, 136, H, W]`` float32 (``[B, 58, H, W]`` when reduced).

    Raises:
        InputError: Bad landmarks, different batch sizes or a bad ``size``.
    """
    size = _check_size(size)
    cond, src = _points(landmarks_condition, "landmarks_condition", size), _points(landmarks_source,
                                                                                    "landmarks_source", size)
    if len(cond) != len(src):
        raise InputError(f"landmarks_condition and landmarks_source differ in batch size ({len(cond)}, {len(src)})")
    keep = np.array(LEGAL_29 if reduced else range(68))
    pts = np.concatenate([cond[:, keep], src[:, keep]], axis=1)  # [B, C, 2]
    b, c = pts.shape[:2]
    out = torch.zeros(b, c, *size)
    bi, ci = np.meshgrid(np.arange(b), np.arange(c), indexing="ij")
    out[torch.from_numpy(bi.ravel()), torch.from_numpy(ci.ravel()),
        torch.from_numpy(pts[..., 1].ravel()), torch.from_numpy(pts[..., 0].ravel())] = 1.0
    return out


# -------------------------------------------------------- OpenCV's fillPoly, re-implemented
_XY_SHIFT = 16
_HALF = 1 << (_XY_SHIFT - 1)


def _line_pixels(p: tuple[int, int], q: tuple[int, int]) -> list[tuple[int, int]]:
    """Pixels of OpenCV's 8-connected ``LineIterator`` from ``p`` to ``q`` (drawn left to right)."""
    (x1, y1), (x2, y2) = p, q
    if x2 < x1:
        (x1, y1), (x2, y2) = (x2, y2), (x1, y1)
    dx, dy, ystep = x2 - x1, abs(y2 - y1), (1 if y2 >= y1 else -1)
    steep = dy > dx
    big, small = (dy, dx) if steep else (dx, dy)
    err, x, y, pts = big - 2 * small, x1, y1, []
    for _ in range(big + 1):
        pts.append((x, y))
        diag = err < 0
        err += -2 * small + (2 * big if diag else 0)
        if steep:
            y, x = y + ystep, x + (1 if diag else 0)
        else:
            x, y = x + 1, y + (ystep if diag else 0)
    return pts


def _trunc_div(a: int, b: int) -> int:
    """C's integer division (rounds toward zero)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


def fill_poly(points: Any, height: int, width: int) -> np.ndarray:
    """``cv2.fillPoly`` of one polygon with integer vertices inside the image (8-connected, no shift).

    OpenCV draws the outline with its 8-connected lines, then fills each scanline ``y`` between
    consecutive crossings of the edges active there (``y0 <= y < y1``, 16-bit fixed point, each
    edge starting half a pixel right of its vertex), from pixel ``floor(left)`` to
    ``floor(right)``. This is OpenCV 4.10's rule (upstream's 4.x; pixel-identical on 3,000
    random, also self-intersecting, polygons); OpenCV 4.14 and 5.0 leave out the last pixel of
    some rows on right-hand edges (5 pixels of the parity fixture's second mask).

    Shape: ``points`` ``[N, 2]`` ``(x, y)``; returns ``[height, width]`` bool.
    """
    pts = [(int(x), int(y)) for x, y in np.asarray(points).reshape(-1, 2)]
    img = np.zeros((height, width), bool)
    edges = []
    for p0, p1 in zip(pts[-1:] + pts[:-1], pts):
        for x, y in _line_pixels(p0, p1):
            if 0 <= x < width and 0 <= y < height:
                img[y, x] = True
        if p0[1] == p1[1]:
            continue
        x0, x1 = (p0[0] << _XY_SHIFT) + _HALF, (p1[0] << _XY_SHIFT) + _HALF
        dx = _trunc_div(x1 - x0, p1[1] - p0[1])
        edges.append((p0[1], p1[1], x0, dx) if p0[1] < p1[1] else (p1[1], p0[1], x1, dx))
    if not edges:
        return img
    for y in range(max(min(e[0] for e in edges), 0), min(max(e[1] for e in edges), height)):
        xs = sorted(x + (y - y0) * dx for y0, y1, x, dx in edges if y0 <= y < y1)
        for a, b in zip(xs[0::2], xs[1::2]):
            left, right = a >> _XY_SHIFT, b >> _XY_SHIFT
            if left < width and right >= 0:
                img[y, max(left, 0) : min(right, width - 1) + 1] = True
    return img


def mask_polygon(landmarks: np.ndarray) -> np.ndarray:
    """Upstream's face polygon: ``(x0, y19)``, jaw points 0-16, ``(x16, y24)``. Shape: ``[68, 2]`` -> ``[19, 2]``."""
    lm = np.asarray(landmarks)
    return np.concatenate([[[lm[0, 0], lm[19, 1]]], lm[:17], [[lm[16, 0], lm[24, 1]]]])


def face_mask(landmarks_source: Any, size: tuple[int, int] = FRAME_SIZE) -> torch.Tensor:
    """The source's face mask of ``create_landmark_and_mask``: :func:`mask_polygon` filled as OpenCV 4.x does.

    Points are rounded and clipped into the frame as in :func:`encode_landmarks`.

    Shape:
        ``landmarks_source`` ``[B, 68, 2]`` (or ``[68, 2]``) ``(x, y)``; returns ``[B, 1, H, W]``
        float32, 1 inside the face.
    """
    size = _check_size(size)
    pts = _points(landmarks_source, "landmarks_source", size)
    masks = [fill_poly(mask_polygon(lm), *size) for lm in pts]
    return torch.from_numpy(np.stack(masks)[:, None].astype(np.float32))
