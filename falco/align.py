"""Faces in real photos: detection, 68-point landmarks, FFHQ alignment and paste-back.

Typical use::

    from falco.imageio import load_image
    from falco.align import detect_and_align, paste_back

    photo = load_image("group.jpg")
    faces = detect_and_align(photo, size=256)          # sorted left to right, top to bottom
    for face in faces:
        photo = paste_back(photo, face, new_crop_for(face))

The implementation lives in :mod:`falco.faces` (``detect``, ``ffhq``, ``paste``, ``pipeline``).
"""

from falco.faces import (
    AlignedFace,
    Box,
    CnnDetector,
    Detector,
    DlibDetector,
    HogDetector,
    align_face,
    apply_transform,
    detect_and_align,
    dlib_model_path,
    face_mask,
    ffhq_quad,
    get_detector,
    paste_back,
    photo_mask,
    quad_transform,
)

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
