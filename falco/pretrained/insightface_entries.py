"""The registry entries of insightface's ``buffalo_l`` files (``--detector scrfd``, the ``insightface`` recogniser).

Kept apart from :mod:`falco.pretrained.registry` (which includes them) for the module size limit.
"""

from __future__ import annotations

from typing import Any

from falco.pretrained.entry import ModelEntry

__all__ = ["BUFFALO_L_ENTRIES"]

_BUFFALO_L_ZIP = "https://github.com/deepinsight/insightface/releases/download/v0.7/buffalo_l.zip"


def _buffalo_l(*, filename: str, **fields: Any) -> ModelEntry:
    """A file of insightface's ``buffalo_l`` pack (a zip upstream; falco downloads the file from mirrors)."""
    return ModelEntry(
        filename=filename,
        urls=(f"https://huggingface.co/public-data/insightface/resolve/main/models/buffalo_l/{filename}",
              f"https://huggingface.co/deepghs/insightface/resolve/main/buffalo_l/{filename}"),
        licence=("insightface pretrained models: non-commercial research purposes only (the code is MIT; "
                 "commercial use needs a licence from insightface.ai)"),
        licence_tag="insightface non-commercial (research only)", layout="onnx",
        homepage="https://github.com/deepinsight/insightface/tree/master/python-package",
        checksum_source=(
            "not published by insightface (its zip carries no checksums); the sha256 and size agree across "
            "several independent third-party pins of the buffalo_l files (Hugging Face mirrors public-data/insightface "
            "and deepghs/insightface, immich-app's buffalo_l); not verified by falco against the upstream zip"
        ),
        notes=(f"upstream ships it inside {_BUFFALO_L_ZIP}; to use that instead: unzip it and "
               "`falco models download --from-dir` the folder. Needs `pip install --no-deps insightface==2.1`."),
        **fields)


BUFFALO_L_ENTRIES: tuple[ModelEntry, ...] = (
    _buffalo_l(
        name="scrfd-10g-buffalo-l",
        filename="det_10g.onnx",
        sha256="5838f7fe053675b1c7a08b633df49e7af5495cee0493c7dcf6697200b85b5b91",
        size=16923827,
        role="detector-scrfd",
        preprocessing=(
            "BGR uint8 photo letterboxed into the input (insightface SCRFD.detect: (x - 127.5) / 128, RGB NCHW); "
            "strides 8/16/32, 2 anchors, score >= 0.5, NMS 0.4; boxes + 5 points (eyes, nose, mouth corners)"
        ),
        description="SCRFD-10GF face detector with 5 points, insightface buffalo_l (falco --detector scrfd)",
    ),
    _buffalo_l(
        name="arcface-w600k-r50-buffalo-l",
        filename="w600k_r50.onnx",
        sha256="4c06341c33c2ca1f86781dab0e829f88ad5b64be9fba56e56bc9ebdefc619e43",
        size=174383860,
        role="recognizer-insightface",
        preprocessing=(
            "insightface norm_crop: 5-point similarity onto the ArcFace 112x112 template, BGR -> RGB, "
            "(x - 127.5) / 127.5 NCHW; 512-d embedding; same person when cosine >= 0.28 (insightface's demo)"
        ),
        description="ArcFace ResNet-50 (WebFace600K), insightface buffalo_l (re-identification, guard)",
    ),
)
