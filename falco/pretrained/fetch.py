"""Fetching one URL or one tar-archive member into a ``.part`` file: resumable, never mixed.

Every download goes to ``<file>.part`` (resumed with an HTTP ``Range`` request when it is
there, guarded by ``If-Range`` with the ETag/Last-Modified seen first, both kept in a
``<file>.part.json`` sidecar). A ``.part`` left by another URL is discarded, never appended to.
Tar-archive mirrors (the FALCO reference's Dropbox tars, whose own sha256 is published) are
verified before the member is extracted.

The network is reached only through :func:`_urlopen` (tests patch it). ``FALCO_OFFLINE=1``
makes :func:`offline` true; :mod:`falco.pretrained.download` then refuses to fetch.

Google Drive: the ``drive.usercontent.google.com ... confirm=t`` URL skips the virus-scan
page for large files; when Drive still answers with an HTML page the confirm form is parsed
and followed once. Drive also enforces per-file download quotas: when it refuses, download
the file in a browser and import it with ``falco models download --from-dir DIR``.
"""

from __future__ import annotations

import hashlib
import html
import http.client
import json
import os
import re
import socket
import sys
import tarfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path, PurePosixPath
from typing import Any

from falco.pretrained.modelset import file_sha256
from falco.pretrained.registry import ArchiveSource

__all__ = [
    "CHUNK",
    "TIMEOUT",
    "FetchError",
    "archive_path",
    "clear_part",
    "fetch_from_archive",
    "fetch_url",
    "offline",
    "read_sidecar",
    "sidecar",
]

TIMEOUT = 30.0  # seconds, for connecting and for each read
CHUNK = 1 << 20
_MAX_HTML = 1 << 20
_NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, socket.timeout, TimeoutError, ConnectionError, OSError)


def _urlopen(request: urllib.request.Request, timeout: float = TIMEOUT) -> Any:
    """Open a URL. The only door to the network: tests replace this function."""
    return urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 (https URLs from the registry)


def offline() -> bool:
    """True when ``FALCO_OFFLINE`` is set to a true value."""
    return os.environ.get("FALCO_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _user_agent() -> str:
    try:
        from falco import __version__
    except ImportError:  # pragma: no cover
        __version__ = "0"
    return f"falco/{__version__} (+https://github.com/chi0tzp/FALCO)"


class FetchError(Exception):
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
def sidecar(part: Path) -> Path:
    """The JSON file next to a ``.part`` recording its URL, ETag and Last-Modified."""
    return part.with_name(part.name + ".json")


def read_sidecar(part: Path) -> dict[str, Any]:
    """The sidecar's fields; empty when it is missing or unreadable."""
    try:
        data = json.loads(sidecar(part).read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def clear_part(part: Path) -> None:
    """Remove a ``.part`` and its sidecar."""
    part.unlink(missing_ok=True)
    sidecar(part).unlink(missing_ok=True)


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
        FetchError: The URL could not be fetched (with ``network`` set for connection errors).
    """
    part = Path(part)
    part.parent.mkdir(parents=True, exist_ok=True)
    meta = read_sidecar(part)
    if part.exists() and meta.get("url") != url:
        clear_part(part)  # bytes from another URL: never mix
        meta = {}
    offset = part.stat().st_size if part.exists() else 0
    if expected_size is not None and offset > expected_size:
        clear_part(part)
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
            clear_part(part)
            return fetch_url(url, part, progress=progress, desc=desc, expected_size=expected_size, _depth=_depth)
        reason, network = _describe(exc)
        raise FetchError(url, reason, network=network) from None
    except _NETWORK_ERRORS as exc:
        reason, network = _describe(exc)
        raise FetchError(url, reason, network=network) from None

    with _closing(resp):
        status = _status(resp)
        ctype = (_header(resp, "Content-Type") or "").lower()
        if ctype.startswith("text/html"):
            page = resp.read(_MAX_HTML).decode("utf-8", "replace")
            follow = _gdrive_confirm_url(page, url) if _depth < 2 else None
            if follow:
                return fetch_url(follow, part, progress=progress, desc=desc, expected_size=expected_size, _depth=_depth + 1)
            raise FetchError(url, "got a web page instead of the file (download quota, login or a removed file)",
                             network=False)
        if status == 206 and offset:
            crange = _header(resp, "Content-Range") or ""
            m = re.match(r"bytes (\d+)-\d+/(\d+|\*)", crange)
            if not m or int(m.group(1)) != offset:
                raise FetchError(url, f"bad Content-Range {crange!r} for a resume at byte {offset}", network=False)
            mode = "ab"
            total = int(m.group(2)) if m.group(2) != "*" else None
        else:
            offset, mode = 0, "wb"  # no resume: start over
            length = _header(resp, "Content-Length")
            total = int(length) if length and length.isdigit() else None
        meta = {"url": url, "etag": _header(resp, "ETag"), "last_modified": _header(resp, "Last-Modified")}
        sidecar(part).write_text(json.dumps(meta), encoding="utf-8")
        total = total or expected_size
        bar = _progress_bar(total, offset, desc or part.name, progress)
        try:
            with open(part, mode) as f:
                while True:
                    try:
                        chunk = resp.read(CHUNK)
                    except _NETWORK_ERRORS as exc:
                        reason, _ = _describe(exc)
                        f.flush()
                        raise FetchError(url, f"interrupted at byte {f.tell()}: {reason}", network=True) from None
                    if not chunk:
                        break
                    f.write(chunk)
                    bar.update(len(chunk))
                written = f.tell()
        finally:
            bar.close()
    if total is not None and written < total:
        raise FetchError(url, f"connection closed at byte {written} of {total}", network=True)


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


# ------------------------------------------------------------------ tar archives
def archive_path(directory: Path, archive: ArchiveSource) -> Path:
    """Where a tar mirror is kept while its members are extracted (named by its sha256)."""
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


def fetch_from_archive(archive: ArchiveSource, directory: Path, part: Path, progress: bool) -> str:
    """Download (or reuse) a verified tar archive and extract ``archive.member`` into ``part``.

    Returns the extracted file's sha256. Raises FetchError.
    """
    apath = archive_path(directory, archive)
    if not apath.is_file():
        apart = apath.with_name(apath.name + ".part")
        fetch_url(archive.url, apart, progress=progress, desc=apath.name)
        if archive.sha256 is not None:
            digest = file_sha256(apart)
            if digest != archive.sha256:
                clear_part(apart)
                raise FetchError(archive.url, f"archive sha256 {digest}, expected {archive.sha256}",
                                 network=False, checksum=True)
        os.replace(apart, apath)
        sidecar(apart).unlink(missing_ok=True)
    try:
        with tarfile.open(apath, "r:*") as tar:
            member = _find_member(tar, archive.member)
            if member is None:
                raise FetchError(archive.url, f"archive has no member {archive.member!r}", network=False)
            src = tar.extractfile(member)
            if src is None:  # pragma: no cover (isfile() checked)
                raise FetchError(archive.url, f"cannot read {member.name!r}", network=False)
            h = hashlib.sha256()
            with src, open(part, "wb") as out:
                for chunk in iter(lambda: src.read(CHUNK), b""):
                    h.update(chunk)
                    out.write(chunk)
    except tarfile.TarError as exc:
        apath.unlink(missing_ok=True)
        raise FetchError(archive.url, f"unreadable archive: {exc}", network=False) from None
    sidecar(part).unlink(missing_ok=True)
    return h.hexdigest()
