"""`falco anonymize` and `falco demo` end to end on the shared photos with a tiny model set."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from falco.run.anonymize import run_anonymize
from falco.latent.optimise import FalcoParams
from falco.config import AnonymizeConfig
from falco.faces.ffhq import AlignedFace
from falco.faces.paste import photo_mask
from falco.run.image_files import load_image
from falco.run.manifest import RunManifest
from tests.conftest import shared_path, wait_for_inputs

FACES = 67
QUIET = dict(progress=False)


def falco_cli(*args: str, timeout: float = 400) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "falco", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def faces_dir() -> Path:
    return shared_path("data", "faces")


@pytest.fixture(scope="module")
def bank_dir(tiny_models, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bank") / "bank"
    res = falco_cli("bank", "build", "--out", str(out), "--num", "300", "--models", str(tiny_models),
                    "--device", "cpu", "--no-progress")
    assert res.returncode == 0, res.stderr
    return out


@pytest.fixture(scope="module")
def anonymized(tiny_models, bank_dir, faces_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("anon") / "out"
    cfg = AnonymizeConfig(input=faces_dir, out=out, models=tiny_models, bank=bank_dir, format="png",
                          device="cpu", **QUIET, falco=FalcoParams(steps=3))
    summary = run_anonymize(cfg, echo=lambda *_: None)
    assert not summary.failed and summary.faces == FACES
    return out


def _face(row: dict) -> AlignedFace:
    return AlignedFace(box=tuple(row["box"]), landmarks=np.array(row["landmarks"]), quad=np.array(row["quad"]),
                       image=np.zeros((256, 256, 3), np.uint8))


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.suffix in (".png", ".safetensors")}


@pytest.mark.slow  # the anonymized fixture: FALCO on all 67 faces
def test_every_photo_is_written_and_only_faces_change(anonymized, faces_dir):
    with RunManifest(anonymized) as m:
        faces = m.faces()
        inputs = {r["source"]: r for r in m.inputs()}
    # the guard re-detects with another detector family (YuNet after HOG, when installed) and covers
    # what HOG missed (small background faces, posters; a dog's face): rows of status "missed"
    found = [f for f in faces if f["status"] != "missed"]
    assert len(inputs) == 11 and len(found) == FACES
    assert all(f["method"] == "guard-fallback" for f in faces if f["status"] == "missed")
    assert not [f for f in found if f["source"] == "dogs.jpg"]
    for key in inputs:
        assert (anonymized / Path(key).with_suffix(".png")).is_file()
    by_photo: dict[str, list[dict]] = {"dogs.jpg": []}
    for row in faces:
        if row["status"] != "missed":
            assert row["status"] == "done" and row["method"] == "falco"
        assert len(row["box"]) == 4 and np.array(row["quad"]).shape == (4, 2)
        by_photo.setdefault(row["source"], []).append(row)
    for source, rows in by_photo.items():
        real = load_image(faces_dir / source)
        anon = load_image(anonymized / Path(source).with_suffix(".png"))
        inside = np.zeros(real.shape[:2], bool)
        for row in rows:
            mask = photo_mask(_face(row), real.shape) > 0
            assert np.abs(real[mask].astype(int) - anon[mask]).mean() > 1.0, f"{source}: a face did not change"
            inside |= mask
        assert np.array_equal(real[~inside], anon[~inside]), f"{source}: pixels outside the faces changed"


@pytest.mark.slow  # the anonymized fixture: FALCO on all 67 faces
def test_codes_and_losses_are_recorded(anonymized):
    with RunManifest(anonymized) as m:
        faces = m.faces()
        run = m.runs()[-1]
    assert run["config"]["falco"]["m"] == 0.0 and run["config"]["method_settings"]["lambda_id"] == 10.0
    assert set(run["config"]["method_settings"]) >= {"steps", "lr", "layers", "bank_size"}
    assert json.loads(json.dumps(run["summary"]))["faces"] == FACES
    row = faces[0]
    codes = load_file(str(anonymized / row["codes"]))
    assert codes["ws"].shape[1:] == (10, 64) and codes["ok"].all()
    assert np.array_equal(codes["ws"][:, :3], codes["ws_real"][:, :3])
    assert set(row["losses"]) == {"id", "attr", "total"} and len(row["loss_curves"]["total"]) == 3
    assert row["neighbour"] >= 0


@pytest.mark.slow  # the anonymized fixture: FALCO on all 67 faces
def test_second_run_does_no_new_work(anonymized, tiny_models, bank_dir, faces_dir):
    before = _digest(anonymized)
    summary = run_anonymize(AnonymizeConfig(input=faces_dir, out=anonymized, models=tiny_models, bank=bank_dir, format="png", device="cpu", **QUIET, falco=FalcoParams(steps=3)), echo=lambda *_: None)
    assert summary.skipped == 11 and summary.faces == 0
    assert _digest(anonymized) == before


@pytest.mark.slow
def test_batched_equals_one_face_at_a_time(tiny_models, bank_dir, faces_dir, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(faces_dir / "2008_002506.jpg", src / "a.jpg")  # 3 + 3 faces
    shutil.copy(faces_dir / "2008_001322.jpg", src / "b.jpg")
    outs = {}
    for bs in (8, 1):
        out = tmp_path / f"bs{bs}"
        run_anonymize(AnonymizeConfig(input=src, out=out, models=tiny_models, bank=bank_dir, format="png",
                                      batch_size=bs, device="cpu", **QUIET, falco=FalcoParams(steps=3)), echo=lambda *_: None)
        outs[bs] = [load_file(str(out / "codes" / f"{k}.jpg.safetensors")) for k in "ab"]
    assert sum(c["ws"].shape[0] for c in outs[8]) >= 4
    # Batching changes float rounding only, but Adam normalises each gradient component by its own
    # size, so a component whose gradient is near zero can move by about lr either way. Guaranteed:
    # the same fakes, the frozen layers equal, every component within Adam's largest move
    # (lr (1 - beta1) / sqrt(1 - beta2) per step, both ways), and nearly all of them equal.
    lr, steps, start, end = 0.01, 3, 3, 8
    for batched, single in zip(outs[8], outs[1]):
        np.testing.assert_array_equal(batched["neighbours"], single["neighbours"])
        a, b = batched["ws"], single["ws"]
        frozen = np.r_[0:start, end:a.shape[1]]
        np.testing.assert_allclose(a[:, frozen], b[:, frozen], atol=1e-5)
        diff = np.abs(a - b)
        assert diff.max() <= 2 * steps * lr * 0.1 / np.sqrt(0.001) + 1e-6
        assert (diff > 1e-4).mean() < 0.02, f"{(diff > 1e-4).sum()} of {diff.size} components differ"


def test_failed_optimisation_falls_back_to_blur(tiny_models, bank_dir, faces_dir, tmp_path, monkeypatch):
    import falco.methods.falco as fm

    def broken(*args, **kwargs):
        raise FloatingPointError("loss is NaN")

    monkeypatch.setattr(fm, "optimise", broken)
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(faces_dir / "2008_001322.jpg", src / "a.jpg")
    out = tmp_path / "out"
    run_anonymize(AnonymizeConfig(input=src, out=out, models=tiny_models, bank=bank_dir, format="png",
                                  device="cpu", **QUIET, falco=FalcoParams(steps=2)), echo=lambda *_: None)
    with RunManifest(out) as m:
        faces = m.faces()
    assert faces and all(f["status"] == "fallback" and f["fallback"] == "blur" for f in faces)
    assert "NaN" in faces[0]["reason"]
    real, anon = load_image(src / "a.jpg"), load_image(out / "a.png")
    for row in faces:
        mask = photo_mask(_face(row), real.shape) > 0
        assert np.abs(real[mask].astype(int) - anon[mask]).mean() > 1.0


@pytest.mark.slow
def test_out_of_memory_halves_the_batch(tiny_models, bank_dir, faces_dir, tmp_path, monkeypatch, caplog):
    import torch

    import falco.methods.falco as fm

    real, sizes = fm.optimise, []

    def limited(ws_real, *args, **kwargs):
        sizes.append(ws_real.shape[0])
        if ws_real.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(ws_real, *args, **kwargs)

    monkeypatch.setattr(fm, "optimise", limited)
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(faces_dir / "2008_002506.jpg", src / "a.jpg")
    shutil.copy(faces_dir / "2008_001322.jpg", src / "b.jpg")
    out = tmp_path / "out"
    with caplog.at_level("WARNING", logger="falco.methods.falco"):
        run_anonymize(AnonymizeConfig(input=src, out=out, models=tiny_models, bank=bank_dir, format="png",
                                      batch_size=8, reuse=False, device="cpu", **QUIET, falco=FalcoParams(steps=2)), echo=lambda *_: None)
    with RunManifest(out) as m:
        faces = m.faces()
    assert len(faces) >= 4 and all(f["status"] == "done" for f in faces)
    assert sizes[0] >= 4 and sizes[1] == sizes[0] // 2  # halved, not dropped to one face at a time
    assert sum(s for s in sizes if s <= 2) == len(faces)  # every face was optimised once, in a batch that fitted
    assert "out of memory at batch" in caplog.text
    # --no-reuse: the fakes picked for the failed batches were not given out, so every face got
    # the same fake as in a run whose batches never failed
    small = tmp_path / "small"
    run_anonymize(AnonymizeConfig(input=src, out=small, models=tiny_models, bank=bank_dir, format="png",
                                  batch_size=2, reuse=False, device="cpu", **QUIET, falco=FalcoParams(steps=2)), echo=lambda *_: None)
    with RunManifest(small) as m:
        expected = {(f["source"], f["face_index"]): f["neighbour"] for f in m.faces()}
    assert {(f["source"], f["face_index"]): f["neighbour"] for f in faces} == expected


@pytest.mark.slow
def test_corrupt_input_exits_1_and_the_rest_is_written(tiny_models, bank_dir, faces_dir, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(faces_dir / "2008_001322.jpg", src / "good.jpg")
    shutil.copy(faces_dir / "dogs.jpg", src / "dogs.jpg")
    (src / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    before = _digest(src) | {"corrupt": hashlib.sha256((src / "corrupt.jpg").read_bytes()).hexdigest()}
    res = falco_cli("anonymize", str(src), "--out", str(tmp_path / "out"), "--models", str(tiny_models),
                    "--bank", str(bank_dir), "--steps", "2", "--device", "cpu", "--no-progress")
    assert res.returncode == 1, res.stdout + res.stderr
    assert "corrupt.jpg" in res.stderr
    assert (tmp_path / "out" / "good.jpg").is_file() and (tmp_path / "out" / "dogs.jpg").is_file()
    assert not (tmp_path / "out" / "corrupt.jpg").exists()
    after = _digest(src) | {"corrupt": hashlib.sha256((src / "corrupt.jpg").read_bytes()).hexdigest()}
    assert after == before, "inputs were modified"
    with Image_open(tmp_path / "out" / "good.jpg") as im:
        assert im.format == "JPEG" and not im.getexif(), "metadata must be stripped"


def Image_open(path: Path):
    from PIL import Image

    return Image.open(path)


def test_bad_arguments_exit_2(tiny_models, faces_dir, tmp_path):
    for args, needle in ((["--method", "nope"], "--method"), (["--format", "gif"], "--format"),
                         (["--layers", "x"], "--layers"), (["--on-fail", "ignore"], "--on-fail"),
                         (["--amp", "int8"], "--amp"), (["--modconv", "grouped"], "--modconv")):
        res = falco_cli("anonymize", str(faces_dir), "--out", str(tmp_path / "o"), "--models", str(tiny_models),
                        "--device", "cpu", *args)
        assert res.returncode == 2, (args, res.stderr)
        assert needle in res.stderr and "Traceback" not in res.stderr


@pytest.mark.slow
def test_speed_switches_from_the_command_line(tiny_models, bank_dir, faces_dir, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(faces_dir / "2008_001322.jpg", src / "a.jpg")
    outs = {}
    for name, flags in (("ref", []), ("fast", ["--amp", "bf16", "--fp16-res", "2", "--modconv", "dense",
                                               "--channels-last"])):
        out = tmp_path / name
        res = falco_cli("anonymize", str(src), "--out", str(out), "--models", str(tiny_models), "--bank",
                        str(bank_dir), "--steps", "2", "--device", "cpu", "--format", "png", "--no-progress", *flags)
        assert res.returncode == 0, res.stderr
        with RunManifest(out) as m:
            settings = m.runs()[-1]["config"]["method_settings"]
        outs[name] = (settings, load_file(str(out / "codes" / "a.jpg.safetensors")))
    assert outs["ref"][0]["amp"] is None and outs["ref"][0]["fused_modconv"] is True
    fast = outs["fast"][0]
    assert (fast["amp"], fast["num_fp16_res"], fast["fused_modconv"], fast["channels_last"]) == ("bf16", 2, False, True)
    ref, out = outs["ref"][1], outs["fast"][1]
    assert np.array_equal(ref["neighbours"], out["neighbours"]) and np.array_equal(ref["ws_real"], out["ws_real"])
    assert np.abs(out["ws"] - ref["ws"]).max() > 0  # bf16 did run
    # Two Adam steps of lr 0.01 move each element by about 0.02 from the same start in both runs, so
    # a max difference under 0.05 could not fail. Compare the bf16 codes' distance from fp32's with
    # how far fp32 moved them from the start (the paired fake in layers 3..7): an unrelated direction
    # gives ~1.4; measured 0.13; 0.5 leaves room for any CPU's bf16.
    from falco.bank import Bank

    start = Bank.open(bank_dir).ws.numpy()[ref["neighbours"]][:, None]  # [faces, 1, w_dim]
    moved = np.linalg.norm(ref["ws"][:, 3:8] - start)
    assert moved > 0 and np.array_equal(ref["ws"][:, :3], ref["ws_real"][:, :3])
    assert np.linalg.norm(out["ws"] - ref["ws"]) / moved < 0.5


def _rank_pid(marker: str, rank: int) -> int | None:
    """The pid of the torchrun worker of ``rank`` whose command line contains ``marker``."""
    for proc_dir in Path("/proc").iterdir():
        if not proc_dir.name.isdigit():
            continue
        try:
            cmdline = (proc_dir / "cmdline").read_bytes().decode(errors="replace")
            environ = (proc_dir / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker in cmdline and "torch.distributed.run" not in cmdline and f"RANK={rank}".encode() in environ:
            return int(proc_dir.name)
    return None


#: the torchrun test's photos, in key order (2, 3, 6, 6, 3, 7 faces): rank 0 takes 11 faces, rank 1 16
TORCHRUN_PHOTOS = ("2008_001009", "2008_001322", "2008_002079", "2008_002470", "2008_002506", "2008_004176")


@pytest.mark.slow
def test_torchrun_matches_single_process_and_resumes_after_a_killed_rank(tiny_models, bank_dir, faces_dir, tmp_path):
    """A 2-rank run, killed midway and resumed, writes the single process's codes and images bit for bit.

    That holds for the same batches and thread count: CPU kernels round differently for other
    batch sizes and thread counts, and Adam turns that rounding into steps of up to ~lr in the
    code components whose gradient is near zero. Ranks take every other photo, so batches of
    several faces would not be the single process's; with ``--batch-size 1`` every run optimises
    each face alone, and OMP_NUM_THREADS is pinned (torchrun sets 1 per worker when it is unset).
    Measured on these photos against 1 thread and batch 1: 2 threads and batches of 8 (a plain
    single process on 2 cores) up to 0.02, 2 threads alone 1e-3, batches of 8 alone 2e-5; the same
    settings twice, 0. In float64, ``optimise`` gives a face the same codes in a batch of 6 as alone
    (to 1e-15): the batch changes rounding only. So the comparison is exact, and a face paired or
    optimised differently fails it.
    """
    src = tmp_path / "in"
    src.mkdir()
    for name in TORCHRUN_PHOTOS:
        shutil.copy(faces_dir / f"{name}.jpg", src / f"{name}.jpg")
    args = [str(src), "--models", str(tiny_models), "--bank", str(bank_dir), "--steps", "3", "--format", "png",
            "--batch-size", "1", "--device", "cpu", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = tmp_path / "single"
    res = subprocess.run([sys.executable, "-m", "falco", "anonymize", *args, "--out", str(single)], env=env,
                         capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stderr[-2000:]
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "falco",
           "anonymize", *args, "--out", str(out)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    db = out / "manifest.sqlite"
    try:
        done = wait_for_inputs(proc, db, 2)
        victim = _rank_pid(str(out), rank=1)
        assert victim is not None, "rank 1 not found"
        os.kill(victim, signal.SIGKILL)  # one rank dies; torchrun tears the job down
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert 2 <= done < len(TORCHRUN_PHOTOS), f"could not kill the job midway ({done} inputs recorded)"
    with sqlite3.connect(db) as con:
        first = dict(con.execute("SELECT source, run_id FROM inputs").fetchall())
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, [line for line in res.stderr.splitlines() if "error" in line.lower()][:10]
    with sqlite3.connect(db) as con:
        final = dict(con.execute("SELECT source, run_id FROM inputs").fetchall())
        n_faces = con.execute("SELECT COUNT(*) FROM faces WHERE status != 'missed'").fetchone()[0]
    assert len(final) == len(TORCHRUN_PHOTOS) and n_faces == 27
    assert all(final[k] == v for k, v in first.items()), "finished inputs were redone"
    for name in TORCHRUN_PHOTOS:
        assert np.array_equal(load_image(single / f"{name}.png"), load_image(out / f"{name}.png")), name
        a, b = (load_file(str(d / "codes" / f"{name}.jpg.safetensors")) for d in (single, out))
        assert a.keys() == b.keys() and "ws" in a, name
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"{name}: {key}")


@pytest.mark.slow
def test_demo_writes_a_page_with_every_step(tmp_path, monkeypatch):
    from falco.run.demo import run_demo

    monkeypatch.setenv("FALCO_HOME", str(tmp_path / "home"))  # no pretrained models: tiny set, loudly
    lines: list[str] = []
    page = run_demo(tmp_path / "demo", steps=3, bank_size=64, device="cpu", progress=False, echo=lines.append)
    text = page.read_text()
    assert any("TINY RANDOM" in line for line in lines)
    assert "Tiny random model set" in text
    import re

    srcs = re.findall(r'src="([^"]+)"', text)
    assert len(srcs) >= 2 + 4 + 1
    for src in srcs:
        assert (page.parent / src).is_file(), src
    assert (page.parent / "loss_curves.png").stat().st_size > 1000


@pytest.mark.slow  # the anonymized fixture: FALCO on all 67 faces
def test_no_reuse_gives_every_face_its_own_fake(anonymized, tiny_models, bank_dir, faces_dir, tmp_path):
    with RunManifest(anonymized) as m:
        shared = [f["neighbour"] for f in m.faces() if f["status"] != "missed"]
    assert len(set(shared)) < len(shared), "with reuse (the paper's pairing) popular fakes are shared"
    src = tmp_path / "in"
    src.mkdir()
    for name in ("2008_002506.jpg", "2008_001322.jpg", "2008_004176.jpg"):
        shutil.copy(faces_dir / name, src / name)
    out = tmp_path / "out"
    cfg = dict(input=src, out=out, models=tiny_models, bank=bank_dir, falco=FalcoParams(steps=1), format="png", reuse=False,
               device="cpu", guard="off", **QUIET)
    # Two runs into one folder: the second skips the photo the first did and must not hand out
    # that photo's fakes again (they are read back from the manifest).
    run_anonymize(AnonymizeConfig(**{**cfg, "input": src / "2008_001322.jpg"}), echo=lambda *_: None)
    summary = run_anonymize(AnonymizeConfig(**cfg), echo=lambda *_: None)
    assert summary.skipped == 1 and summary.done == 2
    with RunManifest(out) as m:
        neighbours = [f["neighbour"] for f in m.faces()]
        assert m.runs()[-1]["config"]["method_settings"]["reuse"] is False
    assert len(neighbours) >= 9 and len(set(neighbours)) == len(neighbours)


def test_a_failing_compile_stops_the_run_with_one_line(tiny_models, bank_dir, faces_dir, tmp_path, monkeypatch):
    """--compile that cannot compile must not turn every face into a blurred fallback."""
    import torch

    import falco.latent.optimise as an
    from falco.errors import RunAbortedError

    class FakeInductorError(RuntimeError):
        pass

    FakeInductorError.__module__ = "torch._inductor.exc"

    def broken_compile(fn, **kwargs):
        def run(*args, **kw):
            raise FakeInductorError("ImportError: main.so: file too short")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    monkeypatch.setattr(an, "_compiled_losses", {})
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(faces_dir / "2008_001322.jpg", src / "a.jpg")
    out = tmp_path / "out"
    with pytest.raises(RunAbortedError, match="--compile.*file too short.*without --compile"):
        run_anonymize(AnonymizeConfig(input=src, out=out, models=tiny_models, bank=bank_dir, format="png", device="cpu", **QUIET, falco=FalcoParams(steps=2, compile=True)), echo=lambda *_: None)
    with RunManifest(out) as m:
        assert m.faces() == [] and m.input_status("a.jpg") is None  # nothing recorded as done or failed
    assert not (out / "a.png").exists()
