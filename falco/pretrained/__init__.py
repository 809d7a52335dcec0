"""Pretrained models: the registry (data), model sets (where files live) and downloads.

The rest of falco only needs::

    from falco.pretrained import resolve_model, is_tiny
    path = resolve_model("generator", models_dir=args.models)   # Path, verified

``resolve_model`` raises ``ModelNotFoundError`` (naming the file, the directory searched and
the ``falco models download NAME`` command) or ``ChecksumError``.
"""

from __future__ import annotations

from falco.pretrained.download import DownloadResult, download_model, download_models, import_from_dir
from falco.pretrained.modelset import (
    KIND_PRETRAINED,
    KIND_TINY,
    MANIFEST_NAME,
    ModelStatus,
    VerifyResult,
    file_sha256,
    is_tiny,
    locate,
    model_status,
    models_dir,
    read_manifest,
    record_file,
    resolve_model,
    verify_file,
    verify_model_set,
    write_manifest,
)
from falco.pretrained.registry import DEFAULTS, REGISTRY, ROLES, ArchiveSource, ModelEntry, get_entry, resolve_name

__all__ = [
    "ArchiveSource",
    "DEFAULTS",
    "DownloadResult",
    "KIND_PRETRAINED",
    "KIND_TINY",
    "MANIFEST_NAME",
    "ModelEntry",
    "ModelStatus",
    "REGISTRY",
    "ROLES",
    "VerifyResult",
    "download_model",
    "download_models",
    "file_sha256",
    "get_entry",
    "import_from_dir",
    "is_tiny",
    "locate",
    "model_status",
    "models_dir",
    "read_manifest",
    "record_file",
    "resolve_model",
    "resolve_name",
    "verify_file",
    "verify_model_set",
    "write_manifest",
]
