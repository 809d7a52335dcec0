"""Download, cache and verification of pretrained models, without a network.

The network is reached only through ``falco.pretrained.fetch._urlopen``; these tests
replace it with :class:`FakeServer`, which serves bytes from memory with or without
``Range`` support and can break a transfer after N bytes.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import urllib.error
import urllib.request
from email.message import Message
from pathlib import Path

import pytest

from falco.errors import ChecksumError, DownloadError, InputError, ModelNotFoundError
from falco.pretrained import download as dl
from falco.pretrained import fetch
from falco.pretrained.modelset import (
    HASH_CACHE_NAME,
    MANIFEST_NAME,
    read_manifest,
    resolve_model,
    verify_model_set,
)
from falco.pretrained.registry import REGISTRY, ArchiveSource, ModelEntry

PAYLOAD = bytes(range(256)) * 4096 + b"tail"  # 1 MiB + 4 bytes: more than one read chunk
SHA = hashlib.sha256(PAYLOAD).hexdigest()
URL = "https://example.invalid/weights/test.pt"
MIRROR = "https://mirror.invalid/test.pt"


# --------------------------------------------------------------------------- fakes
class FakeResponse:
    """Just enough of http.client.HTTPResponse: status, headers, read(n), close()."""

    def __init__(self, body: bytes, status: int = 200, headers: dict[str, str] | None = None,
                 fail_after: int | None = None) -> None:
        self._buf = io.BytesIO(body)
        self.status = status
        self.headers = Message()
        for k, v in (headers or {}).items():
            self.headers[k] = v
        self._fail_after = fail_after
        self._sent = 0

    def read(self, n: int = -1) -> bytes:
        if self._fail_after is not None and self._sent >= self._fail_after:
            raise ConnectionResetError(104, "Connection reset by peer")
        if self._fail_after is not None:
            n = min(n if n >= 0 else 1 << 62, self._fail_after - self._sent)
        chunk = self._buf.read(n)
        self._sent += len(chunk)
        return chunk

    def getcode(self) -> int:
        return self.status

    def close(self) -> None:
        pass


class FakeServer:
    """Serves ``files`` (url -> bytes). Records every request."""

    def __init__(self, files: dict[str, bytes], *, ranges: bool = True, fail_after: int | None = None,
                 etag: str = '"v1"', html: dict[str, str] | None = None,
                 errors: dict[str, Exception] | None = None) -> None:
        self.files = files
        self.ranges = ranges
        self.fail_after = fail_after
        self.etag = etag
        self.html = html or {}
        self.errors = errors or {}
        self.requests: list[urllib.request.Request] = []

    def __call__(self, request: urllib.request.Request, timeout: float = 0) -> FakeResponse:
        self.requests.append(request)
        url = request.full_url
        if url in self.errors:
            raise self.errors[url]
        if url in self.html:
            return FakeResponse(self.html[url].encode(), headers={"Content-Type": "text/html; charset=utf-8"})
        if url not in self.files:
            raise urllib.error.HTTPError(url, 404, "Not Found", Message(), None)
        body = self.files[url]
        fail_after, self.fail_after = self.fail_after, None  # break only the first transfer
        rng = request.get_header("Range")
        if rng and self.ranges:
            start = int(rng.split("=")[1].rstrip("-"))
            if request.get_header("If-range") not in (None, self.etag):
                start = None  # file changed: full body
            if start is not None:
                if start >= len(body):
                    raise urllib.error.HTTPError(url, 416, "Range Not Satisfiable", Message(), None)
                part = body[start:]
                return FakeResponse(part, 206, {
                    "Content-Range": f"bytes {start}-{len(body) - 1}/{len(body)}",
                    "Content-Length": str(len(part)), "ETag": self.etag,
                    "Content-Type": "application/octet-stream"}, fail_after)
        return FakeResponse(body, 200, {"Content-Length": str(len(body)), "ETag": self.etag,
                                        "Content-Type": "application/octet-stream"}, fail_after)


def _entry(name: str = "test-model", *, filename: str = "test.pt", urls=(URL,), sha256: str | None = SHA,
           size: int | None = None, archives=()) -> ModelEntry:
    return ModelEntry(name=name, filename=filename, urls=tuple(urls), sha256=sha256, size=size,
                      licence="test only", role="generator", layout="rosinality",
                      preprocessing="none", archives=tuple(archives))


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """FALCO_HOME in tmp; returns the model-set directory."""
    monkeypatch.setenv("FALCO_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("FALCO_OFFLINE", raising=False)
    return tmp_path / "home" / "models"


@pytest.fixture
def entry(monkeypatch) -> ModelEntry:
    e = _entry()
    monkeypatch.setitem(REGISTRY, e.name, e)
    return e


def _serve(monkeypatch, server: FakeServer) -> FakeServer:
    monkeypatch.setattr(fetch, "_urlopen", server)
    return server


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith((".part", ".part.json")))


# --------------------------------------------------------------------------- tests
def test_good_download_installs_atomically_and_records_manifest(home, entry, monkeypatch):
    server = _serve(monkeypatch, FakeServer({URL: PAYLOAD}, ranges=False))
    [result] = dl.download_models([entry.name], progress=False)
    assert result.action == "downloaded" and result.checked_against == "registry"
    assert (home / "test.pt").read_bytes() == PAYLOAD
    assert _leftovers(home) == []
    rec = read_manifest(home)["files"][entry.name]
    assert rec == {**rec, "filename": "test.pt", "sha256": SHA, "size": len(PAYLOAD), "source": URL}
    assert server.requests[0].get_header("User-agent").startswith("falco/")
    # cached: a second call does not touch the network
    [again] = dl.download_models([entry.name], progress=False)
    assert again.action == "cached" and len(server.requests) == 1
    assert resolve_model(entry.name) == home / "test.pt"


def test_corrupt_download_raises_checksum_error_and_leaves_nothing(home, entry, monkeypatch):
    _serve(monkeypatch, FakeServer({URL: PAYLOAD[:-1] + b"X"}))
    with pytest.raises(ChecksumError, match="sha256"):
        dl.download_models([entry.name], progress=False)
    assert not (home / "test.pt").exists()
    assert _leftovers(home) == []


def test_size_mismatch_is_refused(home, monkeypatch):
    e = _entry(sha256=None, size=len(PAYLOAD) + 1)
    monkeypatch.setitem(REGISTRY, e.name, e)
    _serve(monkeypatch, FakeServer({URL: PAYLOAD}, ranges=False))
    with pytest.raises(ChecksumError, match="size"):
        dl.download_models([e.name], progress=False)
    assert not (home / "test.pt").exists()


def test_mirrors_are_tried_in_order(home, monkeypatch):
    e = _entry(urls=(URL, MIRROR))
    monkeypatch.setitem(REGISTRY, e.name, e)
    server = _serve(monkeypatch, FakeServer({MIRROR: PAYLOAD}))  # upstream answers 404
    [result] = dl.download_models([e.name], progress=False)
    assert [r.full_url for r in server.requests] == [URL, MIRROR]
    assert read_manifest(home)["files"][e.name]["source"] == MIRROR
    assert result.path.read_bytes() == PAYLOAD


def test_corrupt_first_mirror_falls_back_to_good_second(home, monkeypatch):
    e = _entry(urls=(URL, MIRROR))
    monkeypatch.setitem(REGISTRY, e.name, e)
    _serve(monkeypatch, FakeServer({URL: b"garbage" * 10, MIRROR: PAYLOAD}))
    [result] = dl.download_models([e.name], progress=False)
    assert result.path.read_bytes() == PAYLOAD


def test_interrupted_download_resumes_from_part(home, entry, monkeypatch):
    cut = 300_000
    server = _serve(monkeypatch, FakeServer({URL: PAYLOAD}, fail_after=cut))
    with pytest.raises(DownloadError) as info:
        dl.download_models([entry.name], progress=False)
    assert "\n" not in str(info.value) and entry.name in str(info.value)
    assert not (home / "test.pt").exists()
    assert (home / "test.pt.part").stat().st_size == cut
    [result] = dl.download_models([entry.name], progress=False)
    assert server.requests[-1].get_header("Range") == f"bytes={cut}-"
    assert server.requests[-1].get_header("If-range") == '"v1"'
    assert result.path.read_bytes() == PAYLOAD
    assert _leftovers(home) == []


def test_resume_against_server_without_range_restarts(home, entry, monkeypatch):
    server = _serve(monkeypatch, FakeServer({URL: PAYLOAD}, ranges=False, fail_after=1000))
    with pytest.raises(DownloadError):
        dl.download_models([entry.name], progress=False)
    [result] = dl.download_models([entry.name], progress=False)
    assert server.requests[-1].get_header("Range") == "bytes=1000-"  # asked, got a 200: restart
    assert result.path.read_bytes() == PAYLOAD


def test_resume_when_remote_file_changed_restarts(home, entry, monkeypatch):
    server = _serve(monkeypatch, FakeServer({URL: PAYLOAD}, fail_after=5000))
    with pytest.raises(DownloadError):
        dl.download_models([entry.name], progress=False)
    server.etag = '"v2"'  # If-Range no longer matches: the server sends everything
    [result] = dl.download_models([entry.name], progress=False)
    assert result.path.read_bytes() == PAYLOAD


def test_complete_part_with_416_is_finished(home, entry, monkeypatch):
    home.mkdir(parents=True)
    (home / "test.pt.part").write_bytes(PAYLOAD)
    (home / "test.pt.part.json").write_text(json.dumps({"url": URL}))
    _serve(monkeypatch, FakeServer({URL: PAYLOAD}))
    [result] = dl.download_models([entry.name], progress=False)
    assert result.path.read_bytes() == PAYLOAD


def test_part_from_another_url_is_not_mixed(home, monkeypatch):
    e = _entry(urls=(MIRROR,))
    monkeypatch.setitem(REGISTRY, e.name, e)
    home.mkdir(parents=True)
    (home / "test.pt.part").write_bytes(b"junk from elsewhere")
    (home / "test.pt.part.json").write_text(json.dumps({"url": URL}))
    server = _serve(monkeypatch, FakeServer({MIRROR: PAYLOAD}))
    [result] = dl.download_models([e.name], progress=False)
    assert server.requests[0].get_header("Range") is None
    assert result.path.read_bytes() == PAYLOAD


def test_corrupt_cache_entry_detected_on_use_and_redownloaded(home, entry, monkeypatch):
    server = _serve(monkeypatch, FakeServer({URL: PAYLOAD}))
    dl.download_models([entry.name], progress=False)
    path = home / "test.pt"
    assert resolve_model(entry.name, verify=True) == path
    data = bytearray(PAYLOAD)
    data[1000] ^= 0xFF  # same size, new mtime
    path.write_bytes(bytes(data))
    with pytest.raises(ChecksumError) as info:
        resolve_model(entry.name, verify=True)
    assert str(path) in str(info.value) and f"falco models download {entry.name}" in str(info.value)
    assert resolve_model(entry.name, verify=False) == path
    [result] = dl.download_models([entry.name], progress=False)  # a corrupt copy is replaced
    assert result.action == "downloaded" and path.read_bytes() == PAYLOAD
    assert len(server.requests) == 2


def test_hash_cache_avoids_rehashing(home, entry, monkeypatch):
    from falco.pretrained import modelset

    _serve(monkeypatch, FakeServer({URL: PAYLOAD}))
    dl.download_models([entry.name], progress=False)
    calls = []
    real = modelset._sha256_of
    monkeypatch.setattr(modelset, "_sha256_of", lambda p: calls.append(p) or real(p))
    for _ in range(3):
        resolve_model(entry.name)
    assert calls == []  # warmed at install time; size + mtime unchanged
    assert json.loads((home / HASH_CACHE_NAME).read_text())["test.pt"]["sha256"] == SHA
    assert [r.status for r in verify_model_set(None, [entry.name], rehash=True)] == ["ok"]
    assert len(calls) == 1


def test_missing_model_error_names_file_dir_and_command(home, entry):
    with pytest.raises(ModelNotFoundError) as info:
        resolve_model(entry.name)
    msg = str(info.value)
    assert "test.pt" in msg and str(home) in msg and f"falco models download {entry.name}" in msg
    assert "\n" not in msg
    with pytest.raises(ModelNotFoundError) as info:
        resolve_model(entry.name, models_dir=home.parent / "elsewhere")
    assert f"--models {home.parent / 'elsewhere'}" in str(info.value)


def test_offline_fails_fast_with_one_line(home, entry, monkeypatch):
    other = _entry("test-other", filename="other.pt", urls=(MIRROR,))
    monkeypatch.setitem(REGISTRY, other.name, other)
    server = _serve(monkeypatch, FakeServer({}, errors={
        URL: urllib.error.URLError(OSError(-2, "Name or service not known")),
        MIRROR: urllib.error.URLError(OSError(-2, "Name or service not known")),
    }))
    with pytest.raises(DownloadError) as info:
        dl.download_models([entry.name, other.name], progress=False)
    msg = str(info.value)
    assert "\n" not in msg
    assert entry.name in msg and URL in msg and "Name or service not known" in msg
    assert "also not fetched: test-other" in msg and "--from-dir" in msg
    assert [r.full_url for r in server.requests] == [URL]  # fail fast: the second model is not tried
    assert not (home / "test.pt").exists() and _leftovers(home) == []


def test_falco_offline_env_never_touches_network(home, entry, monkeypatch):
    monkeypatch.setenv("FALCO_OFFLINE", "1")
    server = _serve(monkeypatch, FakeServer({URL: PAYLOAD}))
    with pytest.raises(DownloadError, match="offline"):
        dl.download_models([entry.name], progress=False)
    assert server.requests == []


def test_http_error_is_a_download_error(home, entry, monkeypatch):
    _serve(monkeypatch, FakeServer({}))
    with pytest.raises(DownloadError, match="HTTP 404"):
        dl.download_models([entry.name], progress=False)


def test_google_drive_confirm_page_is_followed(home, monkeypatch):
    e = _entry(urls=("https://drive.google.com/uc?export=download&id=ABC",))
    monkeypatch.setitem(REGISTRY, e.name, e)
    page = ('<html><form id="download-form" action="https://drive.usercontent.google.com/download" method="get">'
            '<input type="hidden" name="id" value="ABC"><input type="hidden" name="export" value="download">'
            '<input type="hidden" name="confirm" value="t"><input type="hidden" name="uuid" value="u-1"></form></html>')
    target = "https://drive.usercontent.google.com/download?id=ABC&export=download&confirm=t&uuid=u-1"
    server = _serve(monkeypatch, FakeServer({target: PAYLOAD}, html={e.urls[0]: page}))
    [result] = dl.download_models([e.name], progress=False)
    assert result.path.read_bytes() == PAYLOAD
    assert server.requests[-1].full_url == target


def test_html_instead_of_file_is_refused(home, entry, monkeypatch):
    _serve(monkeypatch, FakeServer({}, html={URL: "<html>Quota exceeded</html>"}))
    with pytest.raises(DownloadError, match="web page"):
        dl.download_models([entry.name], progress=False)
    assert not (home / "test.pt").exists()


def _tar(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_archive_mirror_is_verified_then_extracted(home, monkeypatch):
    archive = _tar({"./pack/other.bin": b"x" * 10, "./pack/test.pt": PAYLOAD})
    aurl = "https://dropbox.invalid/pack.tar?dl=1"
    e = _entry(urls=(URL,), sha256=None, archives=(
        ArchiveSource(aurl, hashlib.sha256(archive).hexdigest(), "pack/test.pt"),))
    monkeypatch.setitem(REGISTRY, e.name, e)
    _serve(monkeypatch, FakeServer({aurl: archive}))  # direct URL 404s
    [result] = dl.download_models([e.name], progress=False)
    assert result.checked_against == "archive" and result.path.read_bytes() == PAYLOAD
    assert not (home / ".archives").exists()  # archive removed once used
    rec = read_manifest(home)["files"][e.name]
    assert rec["sha256"] == SHA and rec["source"].startswith("archive:")
    [v] = verify_model_set(None, [e.name])
    assert v.status == "ok" and v.basis == "manifest"


def test_archive_with_wrong_sha256_is_not_extracted(home, monkeypatch):
    archive = _tar({"pack/test.pt": PAYLOAD})
    aurl = "https://dropbox.invalid/pack.tar?dl=1"
    e = _entry(urls=(), sha256=None, archives=(ArchiveSource(aurl, "0" * 64, "pack/test.pt"),))
    monkeypatch.setitem(REGISTRY, e.name, e)
    _serve(monkeypatch, FakeServer({aurl: archive}))
    with pytest.raises(ChecksumError, match="archive sha256"):
        dl.download_models([e.name], progress=False)
    assert not (home / "test.pt").exists()


def test_unpublished_checksum_is_recorded_and_then_enforced(home, monkeypatch):
    e = _entry(sha256=None)
    monkeypatch.setitem(REGISTRY, e.name, e)
    _serve(monkeypatch, FakeServer({URL: PAYLOAD}))
    [result] = dl.download_models([e.name], progress=False)
    assert result.checked_against == "none" and "no published checksum" in result.describe()
    [v] = verify_model_set(None, [e.name])
    assert v.status == "ok" and "no published checksum" in v.message
    (home / "test.pt").write_bytes(PAYLOAD[::-1])
    with pytest.raises(ChecksumError):
        resolve_model(e.name)


# ------------------------------------------------------------------ --from-dir
def test_from_dir_imports_good_and_refuses_wrong_sha256(home, entry, monkeypatch, tmp_path):
    bad = _entry("test-bad", filename="bad.pt", sha256="0" * 64)
    monkeypatch.setitem(REGISTRY, bad.name, bad)
    src = tmp_path / "by-hand" / "nested"
    src.mkdir(parents=True)
    (src / "test.pt").write_bytes(PAYLOAD)
    (src / "bad.pt").write_bytes(PAYLOAD)
    with pytest.raises(ChecksumError) as info:
        dl.import_from_dir(tmp_path / "by-hand", None, [entry.name, bad.name])
    assert "bad.pt" in str(info.value) and "refused" in str(info.value)
    assert (home / "test.pt").read_bytes() == PAYLOAD  # the good one went in
    assert not (home / "bad.pt").exists() and _leftovers(home) == []
    assert (src / "bad.pt").exists()  # the source is never touched
    assert read_manifest(home)["files"][entry.name]["source"].startswith("from-dir:")


def test_from_dir_missing_name_is_reported(home, entry, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="test.pt"):
        dl.import_from_dir(tmp_path / "empty", None, [entry.name])
    with pytest.raises(InputError, match="not a directory"):
        dl.import_from_dir(tmp_path / "nope", None, [entry.name])


def test_unknown_name_lists_valid_names(home):
    with pytest.raises(InputError) as info:
        dl.download_models(["no-such-model"], progress=False)
    assert "e4e-ffhq" in str(info.value) and "generator" in str(info.value)


def test_pypi_models_are_not_downloaded(home, monkeypatch):
    server = _serve(monkeypatch, FakeServer({}))
    from falco.pretrained.modelset import package_file

    entry = REGISTRY["dlib-landmarks68"]
    if package_file(entry) is None:
        with pytest.raises(DownloadError, match="pip install face-recognition-models"):
            dl.download_models(["dlib-landmarks68"], progress=False)
    else:
        [r] = dl.download_models(["landmarks"], progress=False)
        assert r.action == "package" and r.path.name == entry.filename
    assert server.requests == []


def test_manifest_file_is_valid_json(home, entry, monkeypatch):
    _serve(monkeypatch, FakeServer({URL: PAYLOAD}))
    dl.download_models([entry.name], progress=False)
    data = json.loads((home / MANIFEST_NAME).read_text())
    assert data["format"] == 1 and data["kind"] == "pretrained"
