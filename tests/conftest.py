"""Shared test helpers: where ../shared lives, and how a missing shared file behaves.

Under ``CI=true`` a missing shared file is a failure, not a skip.
"""

from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FALCO_SHARED", REPO.parent / "shared"))
FIXTURES = SHARED / "fixtures"
FACES = SHARED / "data" / "faces"
CELEBA_IDS = SHARED / "data" / "celeba-ids"


def shared_path(*parts: str) -> Path:
    """Return a path under ../shared; skip the test if absent, fail under CI=true."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        msg = f"shared file missing: {path}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def require_insightface() -> None:
    """Skip the test when insightface (``pip install --no-deps insightface==2.1``) does not import; fail under CI=true."""
    from falco.faces.insightface_zoo import insightface_unavailable

    reason = insightface_unavailable()
    if reason:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)


def require_mtcnn() -> None:
    """Skip the test when MTCNN (``pip install --no-deps facenet-pytorch==2.6.0``) cannot be used here; fail it under
    ``CI=true``."""
    from falco.evaluation.detection import mtcnn_available

    reason = mtcnn_available()
    if reason is None:
        return
    msg = f"MTCNN unavailable: {reason} (it also needs `requests`)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(msg)
    pytest.skip(msg)


@pytest.fixture
def insightface_installed() -> None:
    """:func:`require_insightface` as a fixture."""
    require_insightface()


def load_fixture(name: str) -> dict:
    """torch.load a parity fixture from ../shared/fixtures with weights_only=True."""
    import torch

    return torch.load(shared_path("fixtures", name), map_location="cpu", weights_only=True)


def parity_fixture(name: str):
    """A module-scoped fixture that loads the parity fixture ``name`` (:func:`load_fixture`) once.

    Use: ``fixture = parity_fixture("x_synth.pt")`` at module level; the variable names the fixture.
    """

    @pytest.fixture(scope="module")
    def _fixture() -> dict:
        return load_fixture(name)

    return _fixture


def synth_module():
    """Import ../shared/fixtures/synth_weights.py (the rule that regenerates synthetic weights)."""
    import importlib.util

    path = shared_path("fixtures", "synth_weights.py")
    spec = importlib.util.spec_from_file_location("falco_synth_weights", path)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def load_script(name: str):
    """Import ``scripts/<name>.py`` as module ``name`` (the scripts are not a package)."""
    import importlib.util
    import sys

    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def photo_with_faces(name: str, count: int):
    """A photo of ../shared/data/faces and its faces (``detect_and_align``, 256 px); asserts there are ``count``."""
    from falco.align import detect_and_align
    from falco.run.image_files import load_image

    photo = load_image(shared_path("data", "faces", name))
    faces = detect_and_align(photo, size=256)
    assert len(faces) == count
    return photo, faces


def apply_method(anon, photo, faces):
    """``anon`` run on ``faces`` of ``photo`` (process, then apply), with the checks every method passes: the
    photo left as it was, a uint8 output of its shape, settings and records that are JSON data.

    Returns:
        ``(out, records)``.
    """
    import json

    import numpy as np

    before = photo.copy()
    out, records = anon.apply(photo, faces, anon.process(faces))
    assert np.array_equal(photo, before), "input photo was modified"
    assert out.shape == photo.shape and out.dtype == np.uint8
    json.dumps(anon.settings())
    json.dumps(records)
    return out, records


class _SpySummary:
    failed: list = []
    unsafe = 0

    def line(self) -> str:
        return "done"


def anonymize_cli_configs(monkeypatch, tmp_path: Path, *flags: str) -> tuple[int, list]:
    """``(exit code, configs handed to run_anonymize)`` of ``falco anonymize IN --out OUT FLAGS...``, the run
    replaced by a spy (which checks it gets an ``echo`` and prints "message from the run" with it)."""
    import falco.run.anonymize as cmd
    from falco.cli import main

    seen = []

    def spy(cfg, echo=None):
        assert echo is not None  # progress and warnings are printed, on stderr
        echo("message from the run")
        seen.append(cfg)
        return _SpySummary()

    monkeypatch.setattr(cmd, "run_anonymize", spy)
    (tmp_path / "in").mkdir(exist_ok=True)
    with pytest.raises(SystemExit) as exc:
        main(["anonymize", str(tmp_path / "in"), "--out", str(tmp_path / "out"), *flags])
    return exc.value.code, seen


def blind_detection(monkeypatch, misses=(), crashes=()) -> dict:
    """``falco.faces.pipeline.detect_and_align`` finding nothing on the calls in ``misses`` and raising on those in
    ``crashes`` (calls counted from 0: a video's frames, in order). Returns the call counter ``{"n": calls}``."""
    import falco.faces.pipeline as pipeline

    real = pipeline.detect_and_align
    calls = {"n": 0}

    def flaky(image, *args, **kwargs):
        t = calls["n"]
        calls["n"] += 1
        if t in crashes:
            raise RuntimeError("detector crashed")
        return [] if t in misses else real(image, *args, **kwargs)

    monkeypatch.setattr(pipeline, "detect_and_align", flaky)
    return calls


def real_and_anon_folders(root: Path, names, change) -> tuple[Path, Path]:
    """``root/real`` (the shared photos ``names``, as PNG) and ``root/anon`` (``change(photo)`` of each)."""
    from falco.run.image_files import load_image, save_image

    real, anon = root / "real", root / "anon"
    real.mkdir()
    anon.mkdir()
    for name in names:
        img = load_image(shared_path("data", "faces", name))
        save_image(real / Path(name).with_suffix(".png"), img)
        save_image(anon / Path(name).with_suffix(".png"), change(img))
    return real, anon


@contextlib.contextmanager
def torch_threads(n: int):
    """Run the block with ``n`` torch threads, then restore the previous count."""
    import torch

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(n)
        yield
    finally:
        torch.set_num_threads(before)


class ScriptedRecognizers:
    """Stands in for the guard's recognizers: dlib only (threshold 0.6), 'same person' at distance
    ``same_score`` while :meth:`same` says so, else ``other_score``.

    :meth:`same` holds while the face box still has the original pixels; subclasses change the rule.
    """

    class _Dlib:
        threshold = 0.6

    dlib = _Dlib()
    arcface = None
    same_score, other_score = 0.0, 1.0

    def same(self, original, output, face) -> bool:
        import numpy as np

        x0, y0, x1, y1 = face.box
        return bool(np.array_equal(original[y0:y1, x0:x1], output[y0:y1, x0:x1]))

    def check_many(self, original, output, faces):
        from falco.guard import IdentityCheck

        checks = []
        for face in faces:
            same = self.same(original, output, face)
            checks.append([IdentityCheck("dlib", self.same_score if same else self.other_score, same)])
        return checks

    def check(self, original, output, face):
        return self.check_many(original, output, [face])[0]


@pytest.fixture
def one_thread():
    """Torch on one thread: the tiny generators are thin, and on a busy 2-core machine OpenMP threads only get
    in each other's way."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def pair():
    """A photo with two large faces (142 and 114 px quads) and its faces (:func:`photo_with_faces`)."""
    return photo_with_faces("2008_001009.jpg", 2)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> Path:
    """One tiny random model set (``falco models tiny``) for the tests that only read it."""
    from falco.models.tiny import write_tiny_model_set

    d = tmp_path_factory.mktemp("tiny-models")
    write_tiny_model_set(d)
    return d


@pytest.fixture(scope="session")
def tiny_nets(tiny_models) -> dict:
    """The tiny set's networks, loaded once: ``G``, ``E``, ``latent_avg``, ``id_encoder``, ``farl``."""
    from falco.models.zoo import load_role

    G = load_role("generator", tiny_models)
    E, latent_avg = load_role("encoder", tiny_models)
    return dict(G=G, E=E, latent_avg=latent_avg, id_encoder=load_role("identity", tiny_models),
                farl=load_role("attributes", tiny_models))


@pytest.fixture(scope="session", autouse=True)
def _eval_cache_in_tmp(tmp_path_factory):
    """`falco eval-attributes` caches the real side on disk by default: keep the suite's out of ~/.cache."""
    old = os.environ.get("FALCO_EVAL_CACHE")
    os.environ["FALCO_EVAL_CACHE"] = str(tmp_path_factory.mktemp("eval-cache"))
    yield
    if old is None:
        os.environ.pop("FALCO_EVAL_CACHE", None)
    else:
        os.environ["FALCO_EVAL_CACHE"] = old


@pytest.fixture(scope="session")
def tiny_bank(tiny_models, tmp_path_factory) -> Path:
    """A 32-fake bank of the tiny set, built once through the CLI (``falco bank build``)."""
    from typer.testing import CliRunner

    from falco.cli import app

    out = tmp_path_factory.mktemp("tiny-bank") / "bank"
    res = CliRunner().invoke(app, ["bank", "build", "--out", str(out), "--num", "32", "--models", str(tiny_models),
                                   "--device", "cpu", "--no-progress"])
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture(autouse=True)
def _seed_everything():
    import torch

    torch.manual_seed(0)
    yield


def wait_for_inputs(proc, db: Path, count: int, timeout: float = 300) -> int:
    """Poll a run manifest until ``count`` inputs are recorded (or ``proc`` ends); returns how many are."""
    import sqlite3
    import time

    deadline, done = time.time() + timeout, 0
    while time.time() < deadline and proc.poll() is None:
        if db.exists():
            try:
                with sqlite3.connect(db) as con:
                    done = con.execute("SELECT COUNT(*) FROM inputs").fetchone()[0]
            except sqlite3.Error:
                pass
            if done >= count:
                break
        time.sleep(0.2)
    return done


def kernel_backend(request, op: str, cuda_call, host_call):
    """For the ``kernel`` fixtures of the op tests: ``(cuda_call, 'cuda')`` on the cuda backend
    (skipped without a GPU), else ``host_call`` with the extension built for the host as its first
    argument, and ``'cpu'`` (skipped without nvcc/ninja)."""
    import torch

    from stylegan2_ops import _build

    if request.param == "cuda":
        if not torch.cuda.is_available():
            pytest.skip("needs a CUDA device")
        return cuda_call, "cuda"
    problem = _build.find_toolchain().problem()
    if problem is not None:
        pytest.skip(f"needs nvcc and ninja to build the kernel for the host backend: {problem}")
    return functools.partial(host_call, _build.build_extension(op)), "cpu"
