"""The 40 CelebA attributes from FaRL, with the classification head of FacePerceiver/facer.

Checkpoint: ``face_attribute.farl.celeba.pt`` (registry ``farl-celeba-attributes``), a plain
state dict of facer's ``FACTransformer``: ``backbone.*`` is FaRL's CLIP ViT-B/16 visual tower
without ``proj``/``ln_post`` (OpenAI key names), ``head.*`` is ``VITClassificationHeadV0``
on the last transformer layer: the patch tokens' mean and max and the class token, each
layer-normed (``head.norm_{0,1,2}``), mixed by ``softmax(head.weights)`` and classified by
``head.final_fc`` (40 logits, sigmoid). facer reports 92.07 % mean accuracy on CelebA.

Input, as facer's ``FaRLFaceAttribute`` feeds it: the face warped by a similarity transform
of five points (eye centres, nose tip, mouth corners) onto facer's "xray" template in a 224 px
square, RGB in [0, 1], no mean/std. The backbone is loaded through
:func:`falco.models.farl.load_farl` (open_clip), nothing is executed from the file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from falco.errors import CheckpointError

__all__ = ["CELEBA_ATTRIBUTES", "FaRLCelebAClassifier", "FaRLAttributeHead", "five_points", "facer_template"]

CELEBA_ATTRIBUTES: tuple[str, ...] = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs", "Big_Lips",
    "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows", "Chubby", "Double_Chin",
    "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open",
    "Mustache", "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline",
    "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat",
    "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young",
)


def facer_template(size: int = 224, mid_size: int = 500) -> np.ndarray:
    """facer's five-point "xray" template scaled to a ``size`` crop. Shape: ``[5, 2]`` (x, y)."""
    pts = np.array([[85.82991, 85.7792], [169.0532, 84.3381], [127.574, 137.0006],
                    [90.6964, 174.7014], [167.3069, 173.3733]])
    pts[:, 1] += 30
    return (pts - 256 / 2 + mid_size / 2) * size / mid_size


def five_points(landmarks: np.ndarray) -> np.ndarray:
    """Eye centres, nose tip and mouth corners from 68 iBUG landmarks. Shape: ``[68, 2]`` -> ``[5, 2]``."""
    lm = np.asarray(landmarks, dtype=np.float64)
    return np.stack([lm[36:42].mean(0), lm[42:48].mean(0), lm[30], lm[48], lm[54]])


def _similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (Umeyama) mapping ``src`` onto ``dst``. Returns ``[3, 3]``."""
    ms, md = src.mean(0), dst.mean(0)
    s, d = src - ms, dst - md
    u, sig, vt = np.linalg.svd(d.T @ s / len(src))
    e = np.diag([1.0, np.sign(np.linalg.det(u @ vt))])
    R = u @ e @ vt
    scale = float(np.trace(np.diag(sig) @ e) / (s**2).sum(1).mean())
    M = np.eye(3)
    M[:2, :2] = scale * R
    M[:2, 2] = md - scale * R @ ms
    return M


def warp_to_template(image: np.ndarray, landmarks: np.ndarray, size: int = 224) -> np.ndarray:
    """Warp a face onto facer's template. Shape: ``[H, W, 3]`` uint8 -> ``[size, size, 3]`` uint8."""
    from PIL import Image

    M = _similarity(five_points(landmarks), facer_template(size))
    inv = np.linalg.inv(M)  # output pixel -> source pixel (pixel centres at integers)
    a, b, c = inv[0]
    d, e, f = inv[1]
    # Pillow samples the source at inv @ (x + 0.5, y + 0.5) in corner coordinates.
    data = (a, b, c + 0.5 - 0.5 * (a + b), d, e, f + 0.5 - 0.5 * (d + e))
    out = Image.fromarray(image).transform((size, size), Image.Transform.AFFINE, data, Image.Resampling.BILINEAR)
    return np.asarray(out, dtype=np.uint8)


class FaRLAttributeHead(nn.Module):
    """facer's ``VITClassificationHeadV0`` with ``norm=True`` for one transformer layer.

    Shape: tokens ``[B, 1 + g*g, width]`` -> logits ``[B, num_labels]``.
    """

    def __init__(self, width: int = 768, num_labels: int = 40) -> None:
        super().__init__()
        self.weights = nn.Parameter(torch.ones(1, 3, 1))
        self.final_fc = nn.Linear(width, num_labels)
        for i in range(3):
            setattr(self, f"norm_{i}", nn.LayerNorm(width))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        cls, patches = tokens[:, 0], tokens[:, 1:]
        xs = [patches.mean(1), patches.amax(1), cls]
        xs = torch.stack([getattr(self, f"norm_{i}")(x) for i, x in enumerate(xs)], dim=1)
        return self.final_fc((xs * self.weights.softmax(dim=1)).sum(1))


class FaRLCelebAClassifier:
    """40 CelebA attributes per face (label ``"1"`` when the sigmoid is at least ``threshold``).

    Args:
        encoder: FaRL visual tower (:class:`~falco.models.farl.FaRLEncoder`).
        head: The attribute head.
        threshold: Probability at or above which an attribute is present.
        device: Where the networks run.
        tiny: Random test weights (results not meaningful).
    """

    name = "farl-celeba"

    def __init__(self, encoder: nn.Module, head: FaRLAttributeHead, *, threshold: float = 0.5,
                 device: str = "cpu", tiny: bool = False, batch_size: int = 16) -> None:
        self.encoder = encoder.to(device).eval()
        self.head = head.to(device).eval()
        self.threshold = float(threshold)
        self.device = device
        self.tiny = tiny
        self.batch_size = batch_size
        self.attributes = CELEBA_ATTRIBUTES[: head.final_fc.out_features] if head.final_fc.out_features <= 40 else \
            tuple(f"attr_{i}" for i in range(head.final_fc.out_features))

    @classmethod
    def from_file(cls, path: str | os.PathLike, **kwargs: Any) -> FaRLCelebAClassifier:
        """Load ``face_attribute.farl.celeba.pt`` (``torch.load(weights_only=True)``).

        Raises:
            CheckpointError: Unreadable, or not a facer FaRL attribute checkpoint.
        """
        path = Path(path)
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises several types for bad files
            raise CheckpointError(path, f"unreadable checkpoint: {exc}") from exc
        return cls.from_state_dict(raw, source=path, **kwargs)

    @classmethod
    def from_state_dict(cls, raw: Mapping[str, Any], *, source: object = "<state dict>", **kwargs: Any):
        """Build from a facer ``FACTransformer`` state dict (optionally under ``state_dict``)."""
        from falco.models.farl import load_farl

        if isinstance(raw, Mapping) and isinstance(raw.get("state_dict"), Mapping):
            raw = raw["state_dict"]
        if not isinstance(raw, Mapping):
            raise CheckpointError(source, f"expected a state dict, got {type(raw).__name__}")
        sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in raw.items()}
        needed = ("backbone.conv1.weight", "head.final_fc.weight", "head.weights")
        missing = [k for k in needed if not isinstance(sd.get(k), torch.Tensor)]
        if missing:
            raise CheckpointError(source, f"not a facer FaRL attribute checkpoint: missing {', '.join(missing)}")
        if tuple(sd["head.weights"].shape) != (1, 3, 1):
            raise CheckpointError(source, f"head.weights has shape {tuple(sd['head.weights'].shape)}: only the "
                                          "one-layer head (facer 'celeba/224', layers=[11]) is supported")
        width = int(sd["backbone.conv1.weight"].shape[0])
        visual = {"visual." + k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}
        visual.setdefault("visual.proj", torch.zeros(width, 512 if width == 768 else width))
        visual.setdefault("visual.ln_post.weight", torch.ones(width))
        visual.setdefault("visual.ln_post.bias", torch.zeros(width))
        encoder = load_farl(visual)
        head = FaRLAttributeHead(width, int(sd["head.final_fc.weight"].shape[0]))
        head_sd = {k[len("head."):]: v for k, v in sd.items() if k.startswith("head.")}
        try:
            head.load_state_dict(head_sd, strict=True)
        except RuntimeError as exc:
            raise CheckpointError(source, f"attribute head does not fit: {exc}") from exc
        return cls(encoder, head, **kwargs)

    def probabilities(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """Attribute probabilities of template-aligned crops. Shape: ``[N, S, S, 3]`` -> ``[N, 40]``."""
        if len(crops) == 0:
            return np.zeros((0, len(self.attributes)))
        res = self.encoder.config.image_resolution
        out = []
        with torch.no_grad():
            for i in range(0, len(crops), self.batch_size):
                x = torch.from_numpy(np.stack(crops[i:i + self.batch_size])).permute(0, 3, 1, 2).float() / 255.0
                if x.shape[-1] != res:
                    x = torch.nn.functional.interpolate(x, size=(res, res), mode="bilinear", align_corners=False,
                                                        antialias=True)
                tokens = self.encoder.encode_tokens(x.to(self.device))
                out.append(torch.sigmoid(self.head(tokens)).cpu().numpy())
        return np.concatenate(out).astype(np.float64)

    def face_crop(self, image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        """The crop this classifier reads: the face warped onto facer's template. Shape: ``[224, 224, 3]`` uint8."""
        return warp_to_template(image, landmarks, 224)

    def predict_crops(self, crops: Sequence[np.ndarray]) -> list[dict[str, str]]:
        """Labels (``"1"`` / ``"0"``) of :meth:`face_crop` crops, of any photos (batched evaluation)."""
        probs = self.probabilities(crops)
        return [{a: "1" if p >= self.threshold else "0" for a, p in zip(self.attributes, row)} for row in probs]

    def predict_faces(self, image: np.ndarray, landmarks: Sequence[np.ndarray]) -> list[dict[str, str]]:
        """Labels (``"1"`` / ``"0"``) of each face of a photo."""
        return self.predict_crops([self.face_crop(image, lm) for lm in landmarks])
