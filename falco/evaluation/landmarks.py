"""Geometry kept by an anonymizer, from dlib's 68 landmarks: pose, eyes, mouth, landmark error.

Everything here works offline on the iBUG 68-point layout (``[68, 2]`` ``(x, y)`` source
pixels, as :mod:`falco.faces.detect` returns them).

* :func:`landmark_nme`: mean point-to-point distance between the landmarks of the real face
  and those of its anonymized face, normalised by the real face's outer inter-ocular
  distance (points 36 and 45, the 300-W convention) -- pose preservation as AnonyGAN
  reports it.
* :func:`head_pose`: yaw, pitch, roll in degrees from a scaled-orthographic fit of six
  landmarks to a generic 3D face (nose tip, chin, outer eye corners, mouth corners).
  Conventions (camera view): yaw > 0 the face turns toward the image's right, pitch > 0 it
  looks down, roll > 0 it tilts toward the image's left (counter-clockwise on screen).
* :func:`eye_openness` (eye aspect ratio, Soukupova & Cech 2016) and
  :func:`mouth_openness` (inner-lip gap over mouth width).
* :class:`LandmarkAttributes`: the above as discrete labels, so that real and anonymized
  faces can be compared attribute by attribute.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from falco.errors import InputError

__all__ = [
    "LANDMARK_ATTRIBUTES",
    "LandmarkAttributes",
    "eye_openness",
    "head_pose",
    "landmark_nme",
    "mouth_openness",
]

#: A generic 3D face (x right, y up, z toward the viewer; arbitrary units) for six iBUG points.
_MODEL_POINTS = np.array(
    [
        (0.0, 0.0, 0.0),  # 30 nose tip
        (0.0, -330.0, -65.0),  # 8 chin
        (-225.0, 170.0, -135.0),  # 36 outer corner of the eye on the image's left
        (225.0, 170.0, -135.0),  # 45 outer corner of the other eye
        (-150.0, -150.0, -125.0),  # 48 mouth corner, image left
        (150.0, -150.0, -125.0),  # 54 mouth corner, image right
    ]
)
_POSE_INDICES = (30, 8, 36, 45, 48, 54)

#: Attribute names :class:`LandmarkAttributes` predicts, with their classes.
LANDMARK_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "yaw": ("left", "frontal", "right"),
    "pitch": ("up", "level", "down"),
    "roll": ("left", "level", "right"),
    "eyes_open": ("closed", "open"),
    "mouth_open": ("closed", "open"),
}


def _check(landmarks: object, name: str = "landmarks") -> np.ndarray:
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.shape != (68, 2) or not np.isfinite(lm).all():
        raise InputError(f"{name} must be a finite [68, 2] array, got shape {list(lm.shape)}")
    return lm


def landmark_nme(real: np.ndarray, anon: np.ndarray) -> float:
    """Normalised mean error between two 68-point sets, relative to ``real``'s eye corners.

    Shape: ``real``, ``anon`` ``[68, 2]``. Returns a fraction of the inter-ocular distance
    (0 for identical landmarks).

    Raises:
        InputError: Wrong shapes, or coincident eye corners in ``real``.
    """
    real, anon = _check(real, "real"), _check(anon, "anon")
    iod = float(np.hypot(*(real[45] - real[36])))
    if not iod > 0:
        raise InputError("real landmarks have coincident outer eye corners (36, 45)")
    return float(np.linalg.norm(real - anon, axis=1).mean() / iod)


def head_pose(landmarks: np.ndarray) -> tuple[float, float, float]:
    """Yaw, pitch and roll in degrees (see the module docstring for the signs).

    Shape: ``landmarks`` ``[68, 2]``.
    """
    lm = _check(landmarks)
    pts = lm[list(_POSE_INDICES)] * (1.0, -1.0)  # image y points down; the model's y up
    X = _MODEL_POINTS - _MODEL_POINTS.mean(axis=0)
    p = pts - pts.mean(axis=0)
    A, *_ = np.linalg.lstsq(X, p, rcond=None)  # p ~ X @ A, A: [3, 2]
    u, _, vt = np.linalg.svd(A.T, full_matrices=False)  # nearest 2x3 with orthonormal rows
    r12 = u @ vt
    R = np.vstack([r12, np.cross(r12[0], r12[1])])
    pitch = np.degrees(np.arctan2(R[2, 1], R[2, 2]))
    yaw = np.degrees(np.arcsin(np.clip(-R[2, 0], -1.0, 1.0)))
    roll = np.degrees(np.arctan2(R[1, 0], R[0, 0]))
    return float(yaw), float(pitch), float(roll)


def eye_openness(landmarks: np.ndarray) -> float:
    """Mean eye aspect ratio of both eyes (about 0.3 open, under 0.2 closed)."""
    lm = _check(landmarks)

    def ear(e: np.ndarray) -> float:
        width = np.hypot(*(e[3] - e[0]))
        return float((np.hypot(*(e[1] - e[5])) + np.hypot(*(e[2] - e[4]))) / (2.0 * width)) if width > 0 else 0.0

    return 0.5 * (ear(lm[36:42]) + ear(lm[42:48]))


def mouth_openness(landmarks: np.ndarray) -> float:
    """Mean inner-lip gap (points 61-67, 62-66, 63-65) over mouth width (48-54)."""
    lm = _check(landmarks)
    width = float(np.hypot(*(lm[54] - lm[48])))
    gap = np.mean([np.hypot(*(lm[a] - lm[b])) for a, b in ((61, 67), (62, 66), (63, 65))])
    return float(gap / width) if width > 0 else 0.0


def _three_way(value: float, threshold: float, labels: tuple[str, str, str]) -> str:
    return labels[0] if value < -threshold else labels[2] if value > threshold else labels[1]


@dataclass(frozen=True)
class LandmarkAttributes:
    """Discrete attributes from 68 landmarks (always available, no weights needed).

    Attributes:
        yaw_deg: ``|yaw|`` above this is ``left`` / ``right``, else ``frontal``.
        pitch_deg: ``|pitch|`` above this is ``up`` / ``down``, else ``level``.
        roll_deg: ``|roll|`` above this is ``left`` / ``right``, else ``level``.
        eyes_open_ear: eye aspect ratio at or above this is ``open``.
        mouth_open_ratio: inner-lip gap / mouth width at or above this is ``open``.
    """

    yaw_deg: float = 15.0
    pitch_deg: float = 15.0
    roll_deg: float = 10.0
    eyes_open_ear: float = 0.2
    mouth_open_ratio: float = 0.1
    name: str = "landmarks"

    @property
    def attributes(self) -> tuple[str, ...]:
        return tuple(LANDMARK_ATTRIBUTES)

    def measure(self, landmarks: np.ndarray) -> dict[str, float]:
        """Continuous values: ``yaw``, ``pitch``, ``roll`` (degrees), ``eyes_open``, ``mouth_open``."""
        yaw, pitch, roll = head_pose(landmarks)
        return {"yaw": yaw, "pitch": pitch, "roll": roll,
                "eyes_open": eye_openness(landmarks), "mouth_open": mouth_openness(landmarks)}

    def labels(self, values: dict[str, float]) -> dict[str, str]:
        """Discrete labels of :meth:`measure`'s values."""
        return {
            "yaw": _three_way(values["yaw"], self.yaw_deg, LANDMARK_ATTRIBUTES["yaw"]),
            "pitch": _three_way(values["pitch"], self.pitch_deg, LANDMARK_ATTRIBUTES["pitch"]),
            "roll": _three_way(values["roll"], self.roll_deg, LANDMARK_ATTRIBUTES["roll"]),
            "eyes_open": "open" if values["eyes_open"] >= self.eyes_open_ear else "closed",
            "mouth_open": "open" if values["mouth_open"] >= self.mouth_open_ratio else "closed",
        }

    def predict(self, landmarks: np.ndarray) -> dict[str, str]:
        """Labels of one face. Shape: ``landmarks`` ``[68, 2]``."""
        return self.labels(self.measure(landmarks))

    def predict_faces(self, image: np.ndarray, landmarks: list[np.ndarray]) -> list[dict[str, str]]:
        """Labels of each face of a photo (the image itself is not needed)."""
        return [self.predict(lm) for lm in landmarks]
