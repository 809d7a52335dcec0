"""`falco models tiny` and `falco invert` end to end on the shared photos with a tiny model set."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from falco.config import InvertConfig
from falco.run.invert import run_invert
from falco.errors import InputError
from falco.run.manifest import RunManifest
from falco.pretrained.modelset import read_manifest
from tests.conftest import shared_path, wait_for_inputs

FACES_IN_SHARED_PHOTOS = 67


def falco_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "falco", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("models")
    res = falco_cli("models", "tiny", str(d))
    assert res.returncode == 0, res.stderr
    assert "not meaningful" in res.stdout
    return d


@pytest.fixture(scope="module")
def faces_dir() -> Path:
    return shared_path("data", "faces")


@pytest.fixture(scope="module")
def inverted(tiny_models, faces_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("inv") / "out"
    summary = run_invert(InvertConfig(input=faces_dir, out=out, models=tiny_models, device="cpu", progress=False),
                         echo=lambda *_: None)
    assert not summary.failed
    return out


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_tiny_set_verifies_and_is_marked(tiny_models):
    manifest = read_manifest(tiny_models)
    assert manifest["kind"] == "tiny-random"
    assert set(manifest["files"]) == {"stylegan2-ffhq-1024-rosinality", "e4e-ffhq", "arcface-irse50", "farl-ep64",
                                      "ciagan", "deepprivacy", "anonygan", "bisenet-face-parsing"}
    res = falco_cli("models", "verify", "--models", str(tiny_models))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "tiny random model set" in res.stderr


def test_tiny_set_loads_every_role(tiny_models):
    import torch

    from falco.models.zoo import load_role

    G = load_role("generator", tiny_models)
    E, latent_avg = load_role("encoder", tiny_models)
    assert E.n_styles == G.num_ws and latent_avg.shape == (G.num_ws, G.w_dim)
    ident = load_role("identity", tiny_models)
    farl = load_role("attributes", tiny_models)
    with torch.no_grad():
        img = G.synthesis(G.mapping(torch.randn(2, G.z_dim))[:, None].repeat(1, G.num_ws, 1))
        assert img.shape == (2, 3, 64, 64)
        emb = ident(torch.nn.functional.interpolate(img, size=256))
        assert emb.shape == (2, 512)
        assert torch.allclose(emb.norm(dim=1), torch.ones(2), atol=1e-4)
        assert farl.pooled(torch.nn.functional.interpolate(img, size=224)).shape[0] == 2


def test_tiny_set_is_reproducible_and_seeded(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for d, seed in ((a, "0"), (b, "0"), (c, "1")):
        assert falco_cli("models", "tiny", str(d), "--seed", seed).returncode == 0
    ma, mb, mc = (read_manifest(d)["files"] for d in (a, b, c))
    assert {k: v["sha256"] for k, v in ma.items()} == {k: v["sha256"] for k, v in mb.items()}
    assert ma["e4e-ffhq"]["sha256"] != mc["e4e-ffhq"]["sha256"]


@pytest.mark.slow  # the inverted fixture: every shared photo
def test_invert_writes_one_code_per_face(inverted, faces_dir):
    with RunManifest(inverted) as m:
        faces = m.faces()
        inputs = {r["source"]: r for r in m.inputs()}
    assert len(faces) == FACES_IN_SHARED_PHOTOS
    assert inputs["dogs.jpg"]["status"] == "no_face"
    assert inputs["dogs.jpg"]["reason"]
    assert sum(r["status"] == "done" for r in inputs.values()) == 10
    total = 0
    for row in faces:
        codes = load_file(str(inverted / row["codes"]))
        ws = codes["ws"][row["code_index"]]
        assert ws.shape == (10, 64) and np.isfinite(ws).all()
        assert (inverted / row["aligned"]).is_file()
        total += row["code_index"] == 0
    codes_files = sorted((inverted / "codes").glob("*.safetensors"))
    assert len(codes_files) == 10 == total
    assert sum(load_file(str(p))["ws"].shape[0] for p in codes_files) == FACES_IN_SHARED_PHOTOS
    q = load_file(str(inverted / "codes" / "bald_guys.jpg.safetensors"))
    assert q["quads"].shape[1:] == (4, 2) and q["landmarks"].shape[1:] == (68, 2)


@pytest.mark.slow  # the inverted fixture: every shared photo
def test_codes_match_the_encoder_on_the_saved_crops(inverted, tiny_models):
    import torch

    from falco.run.image_files import load_image
    from falco.latent.images import to_tensor
    from falco.latent.invert import invert
    from falco.models.zoo import load_role

    E, latent_avg = load_role("encoder", tiny_models)
    crop = load_image(inverted / "aligned" / "bald_guys.jpg" / "face_01.png")
    with torch.no_grad():
        ws = invert(to_tensor(crop), E, None, latent_avg=latent_avg)
    saved = load_file(str(inverted / "codes" / "bald_guys.jpg.safetensors"))["ws"][1]
    np.testing.assert_allclose(ws[0].numpy(), saved, atol=1e-4)


@pytest.mark.slow  # the inverted fixture: every shared photo
def test_second_run_does_no_new_work(inverted, tiny_models, faces_dir):
    before = _digest(inverted / "codes")
    summary = run_invert(InvertConfig(input=faces_dir, out=inverted, models=tiny_models, device="cpu", progress=False),
                         echo=lambda *_: None)
    assert summary.skipped == 11 and summary.faces == 0 and summary.done == 0
    assert _digest(inverted / "codes") == before


@pytest.mark.slow
def test_killed_run_resumes_without_duplicates(tiny_models, faces_dir, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "falco", "invert", str(faces_dir), "--out", str(out), "--models", str(tiny_models),
           "--device", "cpu", "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        done = wait_for_inputs(proc, out / "manifest.sqlite", 3)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert 3 <= done < 11, f"could not kill the run midway (inputs recorded: {done})"
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    with RunManifest(out) as m:
        faces = m.faces()
        assert len(m.inputs()) == 11
    keys = [(f["source"], f["face_index"]) for f in faces]
    assert len(keys) == len(set(keys)) == FACES_IN_SHARED_PHOTOS
    assert not list(out.rglob("*.tmp")), "temporary files left behind"
    for f in faces:
        assert load_file(str(out / f["codes"]))["ws"].shape[0] > f["code_index"]


def test_bad_inputs_are_recorded_and_do_not_stop_the_run(tiny_models, faces_dir, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(faces_dir / "2008_001322.jpg", src / "good.jpg")
    data = (faces_dir / "bald_guys.jpg").read_bytes()
    (src / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (src / "notanimage.png").write_text("hello")
    (src / "empty.webp").write_bytes(b"")
    before = _digest(src)
    res = falco_cli("invert", str(src), "--out", str(tmp_path / "out"), "--models", str(tiny_models),
                    "--device", "cpu", "--no-progress")
    assert res.returncode == 1, res.stdout + res.stderr
    with RunManifest(tmp_path / "out") as m:
        inputs = {r["source"]: r for r in m.inputs()}
    assert inputs["good.jpg"]["status"] == "done" and inputs["good.jpg"]["num_faces"] >= 1
    for bad in ("notanimage.png", "empty.webp"):
        assert inputs[bad]["status"] == "failed" and bad in inputs[bad]["reason"]
    # A truncated JPEG either fails with a reason or decodes partially; it never stops the run.
    assert inputs["truncated.jpg"]["status"] in {"failed", "done", "no_face"}
    assert "notanimage.png" in res.stdout + res.stderr
    assert _digest(src) == before, "inputs were modified"


def test_out_inside_input_and_missing_input_are_refused(tiny_models, tmp_path, faces_dir):
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(faces_dir / "2008_001322.jpg", src / "a.jpg")
    with pytest.raises(InputError, match="inside INPUT"):
        run_invert(InvertConfig(input=src, out=src / "out", models=tiny_models, device="cpu", progress=False))
    res = falco_cli("invert", str(tmp_path / "nope"), "--out", str(tmp_path / "o"), "--models", str(tiny_models))
    assert res.returncode == 2
    assert "does not exist" in res.stderr and "Traceback" not in res.stderr
    missing = falco_cli("invert", str(src), "--out", str(tmp_path / "o2"), "--models", str(tmp_path / "empty"))
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert "falco models download" in missing.stderr


def test_list_file_input_keys_stay_inside_out(tiny_models, faces_dir, tmp_path):
    lst = tmp_path / "inputs.txt"
    lst.write_text(f"# two photos\n{faces_dir / '2008_001322.jpg'}\n\n{os.path.relpath(faces_dir / 'dogs.jpg', tmp_path)}\n")
    out = tmp_path / "out"
    summary = run_invert(InvertConfig(input=lst, out=out, models=tiny_models, device="cpu", progress=False),
                         echo=lambda *_: None)
    assert summary.done == 1 and summary.no_face == 1
    for p in out.rglob("*"):
        assert out in p.resolve().parents


def _torchrun(*args: str, nproc: int = 2) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
            "-m", "falco", *args]


@pytest.mark.slow
def test_torchrun_two_ranks_match_a_single_process(inverted, tiny_models, faces_dir, tmp_path):
    out = tmp_path / "out"
    res = subprocess.run(_torchrun("invert", str(faces_dir), "--out", str(out), "--models", str(tiny_models),
                                   "--device", "cpu", "--no-progress"), capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stderr[-3000:]
    with RunManifest(out) as m:
        runs = m.runs()
        faces = m.faces()
    assert len(runs) == 2, "each rank records its own run"
    assert len(faces) == FACES_IN_SHARED_PHOTOS
    for p in sorted((inverted / "codes").glob("*.safetensors")):
        a, b = load_file(str(p)), load_file(str(out / "codes" / p.name))
        np.testing.assert_allclose(a["ws"], b["ws"], atol=1e-5)
        np.testing.assert_array_equal(a["quads"], b["quads"])
    for p in sorted((inverted / "aligned").rglob("*.png")):
        assert p.read_bytes() == (out / p.relative_to(inverted)).read_bytes()
    import json

    summary = json.loads((out / "summary.json").read_text())
    assert summary["total"] == 11 and summary["faces"] == FACES_IN_SHARED_PHOTOS and summary["no_face"] == 1


@pytest.mark.slow
def test_slurm_style_array_tasks_share_one_output(tiny_models, faces_dir, tmp_path):
    """RANK/WORLD_SIZE without torchrun (a Slurm array): two tasks, no process group, one manifest."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "falco", "invert", str(faces_dir), "--out", str(out), "--models", str(tiny_models),
           "--device", "cpu", "--no-progress"]
    procs = [subprocess.Popen(cmd, env={**os.environ, "RANK": str(r), "WORLD_SIZE": "2"}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    with RunManifest(out) as m:
        assert len(m.inputs()) == 11 and len(m.faces()) == FACES_IN_SHARED_PHOTOS
        assert len(m.runs()) == 2
    parts = [json.loads((out / f"summary.rank{r}.json").read_text()) for r in range(2)]
    assert sorted(p["total"] for p in parts) == [5, 6]


def test_stale_temp_files_are_removed_but_live_ones_kept(tmp_path):
    from falco.run.inputs import remove_stale_temps

    stale, live = tmp_path / ".a.png.123.tmp", tmp_path / "sub" / ".b.png.456.tmp"
    live.parent.mkdir()
    stale.write_text("x")
    live.write_text("y")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    assert remove_stale_temps(tmp_path, older_than=time.time() - 60) == 1
    assert not stale.exists() and live.exists()


@pytest.mark.slow  # the inverted fixture: every shared photo
def test_invert_with_refinement(inverted, tiny_models, faces_dir, tmp_path):
    out = tmp_path / "out"
    summary = run_invert(InvertConfig(input=faces_dir / "2008_001322.jpg", out=out, models=tiny_models, device="cpu",
                                      refine_steps=3, progress=False), echo=lambda *_: None)
    assert summary.done == 1
    refined = load_file(str(out / "codes" / "2008_001322.jpg.safetensors"))["ws"]
    plain = load_file(str(inverted / "codes" / "2008_001322.jpg.safetensors"))["ws"]
    assert refined.shape == plain.shape and not np.allclose(refined, plain)
    assert np.abs(refined - plain).max() < 1.0  # a few small steps from the e4e code
