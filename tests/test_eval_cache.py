"""The evaluation's on-disk cache of the real photos (detections, landmarks, embeddings) and the
parallel detection prefetch (``--workers``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from falco.errors import InputError
from falco.evaluation import EvalConfig, FeatureCache, evaluate
from falco.evaluation import detection as detection_mod
from falco.evaluation.common import image_digest
from falco.evaluation.disk_cache import MISSING, DiskCache, default_cache_dir
from falco.faces import recognizers as recognizers_mod
from falco.run.image_files import load_image
from tests.conftest import real_and_anon_folders

SMALL_PHOTOS = ("2008_001009.jpg", "2008_001322.jpg", "2009_004587.jpg")
FAST = dict(recognizers=("dlib",), classifiers=("landmarks",), fid=False, progress=False, examples=0)


def test_disk_cache_round_trip(tmp_path):
    disk = DiskCache(tmp_path / "c")
    values = {("det", "d1", "hog:1"): [(1, 2, 3, 4), (5, 6, 7, 8)], ("det", "d2", "hog:1"): [],
              ("lm", "d1", (1, 2, 3, 4)): np.arange(136, dtype=np.float64).reshape(68, 2),
              ("emb", "dlib", "d1", b"\x00\x01"): np.linspace(0, 1, 128).astype(np.float32)}
    for key, value in values.items():
        assert disk.load(key, "spec-a") is MISSING
        disk.store(key, "spec-a", value)
    fresh = DiskCache(tmp_path / "c")
    for key, value in values.items():
        got = fresh.load(key, "spec-a")
        if isinstance(value, np.ndarray):
            assert got.dtype == value.dtype and np.array_equal(got, value)
        else:
            assert got == value and all(isinstance(b, tuple) for b in got)
        assert fresh.load(key, "spec-b") is MISSING  # another tool spec is another entry
    assert len(fresh) == len(values) and fresh.hits == len(values)
    # a torn or foreign file is a miss, never an error; it is rewritten
    path = next((tmp_path / "c").rglob("*.json"))
    path.write_text("{not json")
    assert sum(fresh.load(k, "spec-a") is MISSING for k in values) == 1
    assert not list((tmp_path / "c").rglob(".tmp-*"))


def test_disk_cache_errors_and_default(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="--cache .* not a folder"):
        DiskCache(tmp_path / "file")
    with pytest.raises(TypeError, match="cannot store a set"):
        DiskCache(tmp_path / "d").store(("k",), "s", {1, 2})
    monkeypatch.setenv("FALCO_EVAL_CACHE", str(tmp_path / "env"))
    assert default_cache_dir() == tmp_path / "env"
    monkeypatch.delenv("FALCO_EVAL_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "falco" / "eval"


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Three small real photos and an 'anonymized' copy with every face region flattened."""
    def change(img):
        flat = img.copy()
        flat[img.shape[0] // 4: 3 * img.shape[0] // 4] = 128
        return flat

    return real_and_anon_folders(tmp_path_factory.mktemp("cache-eval"), SMALL_PHOTOS, change)


class _Counter:
    """Counts detector, landmark and embedding calls on the real photos."""

    def __init__(self, monkeypatch, real: Path) -> None:
        self.real = {image_digest(load_image(p)) for p in real.iterdir()}
        self.calls = {"det": 0, "lm": 0, "emb": 0}
        boxes, embed = detection_mod.DlibEvalDetector.boxes, recognizers_mod.DlibRecognizer.embed
        from falco.faces import detect as detect_mod

        lm_orig = detect_mod.DlibDetector.landmarks if hasattr(detect_mod, "DlibDetector") else None

        def count(what, image):
            if image_digest(image) in self.real:
                self.calls[what] += 1

        def boxes_(det, image):
            count("det", image)
            return boxes(det, image)

        def embed_(rec, image, lms):
            count("emb", image)
            return embed(rec, image, lms)

        monkeypatch.setattr(detection_mod.DlibEvalDetector, "boxes", boxes_)
        monkeypatch.setattr(recognizers_mod.DlibRecognizer, "embed", embed_)
        if lm_orig is not None:
            def lm_(det, image, box):
                count("lm", image)
                return lm_orig(det, image, box)

            monkeypatch.setattr(detect_mod.DlibDetector, "landmarks", lm_)


def _numbers(report):
    return {n: (r["detection_rate"], r["reid_rate"], r["rank1_identification"], r["landmark_nme"])
            for n, r in report.runs.items()}


def test_second_evaluation_reuses_the_real_side(folders, tmp_path, monkeypatch):
    real, anon = folders
    counter = _Counter(monkeypatch, real)
    cfg = EvalConfig(real=real, anon=(anon,), names=("flat",), detectors=("hog",), disk_cache=tmp_path / "cache",
                     **FAST)
    first = evaluate(cfg)  # a fresh in-memory cache each time: only the disk carries over
    assert counter.calls["det"] > 0 and counter.calls["emb"] > 0 and counter.calls["lm"] > 0
    written = len(DiskCache(tmp_path / "cache"))
    assert written >= 2 * len(SMALL_PHOTOS)
    counter.calls = {k: 0 for k in counter.calls}
    second = evaluate(cfg)
    assert counter.calls == {"det": 0, "lm": 0, "emb": 0}, "the real side was analysed again"
    assert _numbers(second) == _numbers(first)
    assert len(DiskCache(tmp_path / "cache")) == written
    # without the disk cache the real side is analysed again, with the same numbers
    third = evaluate(EvalConfig(real=real, anon=(anon,), names=("flat",), detectors=("hog",), **FAST))
    assert counter.calls["det"] > 0 and _numbers(third) == _numbers(first)


def test_disk_cache_keys_by_tool(folders, tmp_path, monkeypatch):
    real, anon = folders
    counter = _Counter(monkeypatch, real)
    base = dict(real=real, anon=(anon,), names=("flat",), disk_cache=tmp_path / "cache", **FAST)
    evaluate(EvalConfig(detectors=("hog",), **base))
    counter.calls = {k: 0 for k in counter.calls}
    evaluate(EvalConfig(detectors=("hog:0",), **base))  # another upsampling: another tool spec
    assert counter.calls["det"] == len(SMALL_PHOTOS)


def test_workers_give_the_same_numbers(folders, tmp_path):
    real, anon = folders
    base = dict(real=real, anon=(anon,), names=("flat",), detectors=("hog",), **FAST)
    one = evaluate(EvalConfig(**base))
    cache = FeatureCache()
    two = evaluate(EvalConfig(workers=2, disk_cache=tmp_path / "c", **base), cache=cache)
    assert _numbers(two) == _numbers(one)
    assert len(DiskCache(tmp_path / "c")) > 0  # the workers wrote the real photos' detections
    assert json.dumps(one.data["settings"], sort_keys=True) == json.dumps(two.data["settings"], sort_keys=True)
    with pytest.raises(InputError, match="--workers"):
        evaluate(EvalConfig(workers=0, **base))
