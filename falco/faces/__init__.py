"""Faces in real photos: detection, 68-point landmarks, FFHQ alignment and paste-back.

The public entry point is :mod:`falco.align`, which re-exports everything here.
"""

from falco.faces.detect import Box, CnnDetector, Detector, DlibDetector, HogDetector, dlib_model_path, get_detector
from falco.faces.ffhq import AlignedFace, align_face, apply_transform, ffhq_quad, quad_transform
from falco.faces.paste import face_mask, paste_back, photo_mask
from falco.faces.pipeline import detect_and_align

__all__ = [
    "AlignedFace",
    "Box",
    "CnnDetector",
    "Detector",
    "DlibDetector",
    "HogDetector",
    "align_face",
    "apply_transform",
    "detect_and_align",
    "dlib_model_path",
    "face_mask",
    "ffhq_quad",
    "get_detector",
    "paste_back",
    "photo_mask",
    "quad_transform",
]
