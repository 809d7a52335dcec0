"""Compatibility: ``falco.io.load_image`` and ``falco.io.save_image`` (the code is in :mod:`falco.run.image_files`)."""

from falco.run.image_files import load_image, save_image

__all__ = ["load_image", "save_image"]
