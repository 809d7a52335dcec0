"""Faces in real photos: detection, 68-point landmarks, FFHQ alignment and paste-back.

Typical use::

    from falco.run.image_files import load_image
    from falco.align import detect_and_align, paste_back

    photo = load_image("group.jpg")
    faces = detect_and_align(photo, size=256)          # sorted left to right, top to bottom
    for face in faces:
        photo = paste_back(photo, face, new_crop_for(face))

The implementation lives in :mod:`falco.faces` (``detect``, ``ffhq``, ``paste``, ``pipeline``).
"""

from falco.faces import *  # noqa: F403 - the names listed in falco.faces.__all__
from falco.faces import __all__  # noqa: F401
