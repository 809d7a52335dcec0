"""Registry data, model-set location, tiny-set manifests and the ``falco models`` commands."""

from __future__ import annotations

import hashlib
import json
import re
import urllib.error
from pathlib import Path

import pytest
from typer.testing import CliRunner

from falco.errors import ChecksumError, InputError, ModelNotFoundError
from falco.pretrained import download as dl
from falco.pretrained import fetch
from falco.cli.models import TINY_BANNER, models_app
from falco.pretrained.modelset import (
    KIND_TINY,
    is_tiny,
    models_dir,
    package_file,
    read_manifest,
    resolve_model,
    verify_model_set,
    write_manifest,
)
from falco.pretrained.registry import DEFAULTS, REGISTRY, ROLES, get_entry, resolve_name

runner = CliRunner()


def _dlib_models() -> Path:
    """The landmark model inside the face-recognition-models package; fails (not skips) without it."""
    path = package_file(REGISTRY["dlib-landmarks68"])
    if path is None:
        pytest.fail("the dlib model files are missing: face-recognition-models (a falco dependency) is not "
                    "installed; run `pip install face-recognition-models`", pytrace=False)
    return path


@pytest.fixture(autouse=True)
def _env(tmp_path, monkeypatch):
    monkeypatch.setenv("FALCO_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("FALCO_OFFLINE", raising=False)


def _write_tiny_set(directory: Path) -> dict[str, Path]:
    """What ``falco models tiny`` will do: small files under registry names + a tiny manifest."""
    directory.mkdir(parents=True, exist_ok=True)
    files = {}
    for role in ("generator", "encoder", "identity", "attributes"):
        entry = REGISTRY[DEFAULTS[role]]
        path = directory / entry.filename
        path.write_bytes(hashlib.sha256(role.encode()).digest() * 8)
        files[entry.name] = path
    write_manifest(directory, kind=KIND_TINY, files=files, note="random weights: outputs are not meaningful")
    return files


# ------------------------------------------------------------------------ registry
def test_registry_entries_are_complete():
    for name, e in REGISTRY.items():
        assert e.name == name and e.filename and e.licence and e.licence_tag and e.layout and e.preprocessing
        assert e.role in ROLES
        assert e.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", e.sha256)
        assert e.is_pypi or e.downloadable or e.source == "url"  # manual entries have archives
        for url in e.urls + tuple(a.url for a in e.archives):
            assert url.startswith("https://")
        if e.is_pypi:
            assert e.sha256 and e.size and e.package_path
    for role, name in DEFAULTS.items():
        assert REGISTRY[name].role == role and REGISTRY[name].default
    required = {"stylegan2-ffhq-config-f.pt", "stylegan2-ffhq-1024x1024.pkl", "e4e_ffhq_encode.pt",
                "model_ir_se50.pth", "FaRL-Base-Patch16-LAIONFace20M-ep16.pth",
                "FaRL-Base-Patch16-LAIONFace20M-ep64.pth", "shape_predictor_68_face_landmarks.dat",
                "dlib_face_recognition_resnet_model_v1.dat"}
    assert required <= {e.filename for e in REGISTRY.values()}


def test_research_only_weights_say_so():
    for name in ("stylegan2-ffhq-1024-rosinality", "stylegan2-ffhq-1024-nvlabs", "e4e-ffhq", "arcface-irse50",
                 "dlib-landmarks68"):
        text = REGISTRY[name].licence.lower()
        assert "non-commercial" in text or "research" in text, name


def test_get_entry_by_name_and_role():
    assert get_entry("encoder").name == "e4e-ffhq"
    assert resolve_name("generator") == DEFAULTS["generator"]
    assert resolve_name("generator", {"generator": "stylegan2-ffhq-1024-nvlabs"}) == "stylegan2-ffhq-1024-nvlabs"
    with pytest.raises(InputError, match="valid names: .*e4e-ffhq"):
        get_entry("stylegan3")


# ------------------------------------------------------------------- location
def test_models_dir_precedence(tmp_path, monkeypatch):
    assert models_dir(tmp_path / "x") == tmp_path / "x"
    assert models_dir() == tmp_path / "home" / "models"
    monkeypatch.delenv("FALCO_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert models_dir() == tmp_path / "user" / ".cache" / "falco" / "models"
    assert models_dir("~/m") == tmp_path / "user" / "m"


def test_dlib_models_resolve_from_the_package(tmp_path):
    dlib_models = _dlib_models()
    path = resolve_model("landmarks", tmp_path / "empty")
    assert path == dlib_models
    assert path.name == "shape_predictor_68_face_landmarks.dat" and "face_recognition_models" in str(path)
    assert resolve_model("dlib-recognition-resnet").stat().st_size == REGISTRY["dlib-recognition-resnet"].size


def test_missing_pypi_model_says_pip_install(tmp_path, monkeypatch):
    from falco.pretrained import modelset

    monkeypatch.setattr(modelset, "package_file", lambda entry: None)
    with pytest.raises(ModelNotFoundError, match="pip install face-recognition-models"):
        resolve_model("dlib-landmarks68", tmp_path)


def test_broken_manifest_is_an_input_error(tmp_path):
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(InputError, match="manifest.json"):
        read_manifest(tmp_path)


# ------------------------------------------------------------------- tiny sets
def test_tiny_set_verifies_against_its_manifest(tmp_path):
    _dlib_models()
    d = tmp_path / "m"
    files = _write_tiny_set(d)
    assert is_tiny(d) and not is_tiny(tmp_path / "nothing")
    results = verify_model_set(d)
    assert {r.name for r in results} >= set(DEFAULTS.values())
    assert all(r.status == "ok" for r in results), [r.message for r in results]
    tiny_e4e = [r for r in results if r.name == "e4e-ffhq"][0]
    assert tiny_e4e.basis == "manifest"  # not the registry hash of the real e4e
    assert resolve_model("encoder", d) == files["e4e-ffhq"]


def test_tiny_set_corruption_is_detected(tmp_path):
    d = tmp_path / "m"
    files = _write_tiny_set(d)
    files["e4e-ffhq"].write_bytes(b"changed")
    with pytest.raises(ChecksumError, match="manifest"):
        resolve_model("encoder", d)
    [r] = verify_model_set(d, ["encoder"])
    assert r.status == "corrupt"


def test_tiny_set_defaults_and_filenames_from_manifest(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    (d / "g.pkl").write_bytes(b"tiny pickle")
    write_manifest(d, kind=KIND_TINY, files={"stylegan2-ffhq-1024-nvlabs": d / "g.pkl"},
                   defaults={"generator": "stylegan2-ffhq-1024-nvlabs"})
    assert resolve_model("generator", d) == d / "g.pkl"


def test_no_downloads_into_a_tiny_set(tmp_path, monkeypatch):
    d = tmp_path / "m"
    _write_tiny_set(d)
    monkeypatch.setattr(fetch, "_urlopen", lambda *a, **k: pytest.fail("network touched"))
    with pytest.raises(InputError, match="tiny"):
        dl.download_models(["farl-ep16"], d, progress=False)


# ------------------------------------------------------------------------- CLI
def test_cli_list_shows_table(tmp_path):
    result = runner.invoke(models_app, ["list", "--models", str(tmp_path / "m")], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for name in ("stylegan2-ffhq-1024-rosinality", "e4e-ffhq", "arcface-irse50", "farl-ep64", "dlib-landmarks68"):
        assert name in result.output
    assert "research only" in result.output


def test_cli_verify_tiny_set_succeeds(tmp_path):
    _dlib_models()
    d = tmp_path / "m"
    _write_tiny_set(d)
    result = runner.invoke(models_app, ["verify", "--models", str(d)])
    assert result.exit_code == 0, result.output
    assert TINY_BANNER in result.output
    list_out = runner.invoke(models_app, ["list", "--models", str(d)], env={"COLUMNS": "200"}).output
    assert TINY_BANNER in list_out


def test_cli_verify_missing_exits_1(tmp_path):
    result = runner.invoke(models_app, ["verify", "encoder", "--models", str(tmp_path / "m")])
    assert result.exit_code == 1
    assert "falco models download e4e-ffhq" in result.output


def test_cli_download_offline_is_one_line_exit_1(tmp_path, monkeypatch):
    def offline(request, timeout=0):
        raise urllib.error.URLError(OSError(-2, "Name or service not known"))

    monkeypatch.setattr(fetch, "_urlopen", offline)
    result = runner.invoke(models_app, ["download", "--quiet", "--models", str(tmp_path / "m")])
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and DEFAULTS["generator"] in errors[0] and "--from-dir" in errors[0]
    assert "Traceback" not in result.output


def test_cli_from_dir_refuses_wrong_sha256(tmp_path):
    src = tmp_path / "hand"
    src.mkdir()
    (src / "e4e_ffhq_encode.pt").write_bytes(b"not the real e4e")
    result = runner.invoke(models_app, ["download", "e4e-ffhq", "--from-dir", str(src), "--models", str(tmp_path / "m")])
    assert result.exit_code == 2
    assert "refused" in result.output and "e4e_ffhq_encode.pt" in result.output
    assert not (tmp_path / "m" / "e4e_ffhq_encode.pt").exists()


def test_cli_from_dir_accepts_unpublished_checksum(tmp_path):
    src = tmp_path / "hand"
    src.mkdir()
    (src / "model_ir_se50.pth").write_bytes(b"pretend irse50")
    m = tmp_path / "m"
    result = runner.invoke(models_app, ["download", "--from-dir", str(src), "--models", str(m)])
    assert result.exit_code == 0, result.output
    assert "no published checksum" in result.output
    rec = json.loads((m / "manifest.json").read_text())["files"]["arcface-irse50"]
    assert rec["sha256"] == hashlib.sha256(b"pretend irse50").hexdigest()
    out = runner.invoke(models_app, ["verify", "identity", "--models", str(m)]).output
    assert "no published checksum" in out


def test_cli_unknown_name_exit_2(tmp_path):
    result = runner.invoke(models_app, ["download", "nope", "--models", str(tmp_path)])
    assert result.exit_code == 2 and "unknown model 'nope'" in result.output
