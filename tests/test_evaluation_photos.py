"""falco eval-attributes on the shared photos: itself, a heavily blurred copy, an 8x8 pixelated copy.

The real photos are analysed once (one FeatureCache for the module); the self-comparison costs
nothing more, because identical pixels hit the cache. The dlib CNN detector is slow on a CPU, so
it runs on three small photos only. MTCNN (``facenet-pytorch``) has tests of its own, skipped
when it cannot be imported, and failing instead under ``CI=true``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from falco.evaluation import EvalConfig, FeatureCache, evaluate, write_report
from falco.evaluation import detection as detection_mod
from falco.run.image_files import load_image, save_image
from falco.run.manifest import RunManifest
from tests.conftest import require_mtcnn, shared_path, torch_threads

FACES_IN_SHARED_PHOTOS = 67
SMALL_PHOTOS = ("2008_001009.jpg", "2008_001322.jpg", "2009_004587.jpg")
FAST = dict(recognizers=("dlib",), classifiers=("landmarks",), fid=False, progress=False)


def _link_subset(src: Path, dst: Path, names) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for name in names:
        (dst / name).symlink_to(src / name)
    return dst


def _region(box, shape):
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    return (max(0, int(x0 - 0.25 * w)), max(0, int(y0 - 0.35 * h)),
            min(shape[1], int(x1 + 0.25 * w)), min(shape[0], int(y1 + 0.2 * h)))


def _degrade(faces_dir: Path, names, boxes: dict, out: Path, how: str) -> Path:
    """Blur (Gaussian, sigma = face size / 8) or pixelate (8 x 8 blocks) every face region; PNG output."""
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        img = load_image(faces_dir / name)
        pil = Image.fromarray(img)
        for box in boxes.get(name, []):
            r = _region(box, img.shape)
            reg = pil.crop(r)
            if how == "blur":
                reg = reg.filter(ImageFilter.GaussianBlur(radius=max(box[2] - box[0], box[3] - box[1]) / 8))
            else:
                reg = reg.resize((8, 8), Image.Resampling.BOX).resize(reg.size, Image.Resampling.NEAREST)
            pil.paste(reg, r[:2])
        save_image(out / Path(name).with_suffix(".png"), np.asarray(pil))  # another suffix: paired by stem
    return out


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """MTCNN's many tiny convolutions run several times faster on one thread on a busy 2-core machine."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def faces_dir() -> Path:
    return shared_path("data", "faces")


@pytest.fixture(scope="module")
def cache() -> FeatureCache:
    return FeatureCache()


@pytest.fixture(scope="module")
def self_report(faces_dir, cache):
    cfg = EvalConfig(real=faces_dir, anon=(faces_dir,), names=("self",), detectors=("hog",), **FAST)
    return evaluate(cfg, cache=cache)


@pytest.fixture(scope="module")
def degraded(faces_dir, self_report, cache, tmp_path_factory):
    """Blurred and pixelated copies of the ten small photos, evaluated with the self-comparison."""
    root = tmp_path_factory.mktemp("degraded")
    names = [p.name for p in sorted(faces_dir.glob("*.jpg")) if p.name != "bald_guys.jpg"]
    real = _link_subset(faces_dir, root / "real", names)
    boxes: dict[str, list] = {}
    for row in self_report.faces["self"]:
        boxes.setdefault(row["source"], []).append(row["real_box"])
    blur = _degrade(faces_dir, names, boxes, root / "blur", "blur")
    pix = _degrade(faces_dir, names, boxes, root / "pixelate-8", "pixelate")
    cfg = EvalConfig(real=real, anon=(real, blur, pix), names=("self", "blur-heavy", "pixelate-8x8"),
                     detectors=("hog",), examples=4, **FAST)
    report = evaluate(cfg, cache=cache)
    paths = write_report(report, root / "report")
    return report, paths, root


# ------------------------------------------------------------------- acceptance
@pytest.mark.slow  # evaluates every shared photo
def test_self_comparison_is_perfect(self_report):
    run = self_report.runs["self"]
    counts = run["counts"]
    assert counts["faces"] == FACES_IN_SHARED_PHOTOS and counts["photos"] == 11
    assert run["detection_rate"] == {"hog": 1.0}  # only the detectors asked for, MTCNN installed or not
    assert counts["detection_rate"]["hog"] == FACES_IN_SHARED_PHOTOS
    assert run["reid_rate"]["dlib"] == 1.0 and run["rank1_identification"]["dlib"] == 1.0
    assert run["landmark_nme"] == 0.0
    assert all(v == 1.0 for v in run["attribute_agreement"].values())
    assert set(run["attribute_agreement"]) == {"yaw", "pitch", "roll", "eyes_open", "mouth_open", "mean"}
    assert run["details"]["reid_score_mean"]["dlib"]["mean"] == 0.0
    assert run["fid"] is None and "fid" in run["not_computed"]
    assert not [k for k in run["not_computed"] if k.startswith("detection_rate.")]
    assert self_report.data["not_installed"] == {}  # --no-fid is not "not installed"


@pytest.mark.slow  # evaluates every shared photo
def test_mtcnn_self_comparison_is_perfect(faces_dir, cache):
    require_mtcnn()
    report = evaluate(EvalConfig(real=faces_dir, anon=(faces_dir,), names=("self",), detectors=("mtcnn",), **FAST),
                      cache=cache)
    run = report.runs["self"]
    assert run["detection_rate"] == {"mtcnn": 1.0} and run["counts"]["detection_rate"]["mtcnn"] > 0
    assert "detection_rate.mtcnn" not in run["not_computed"]
    assert report.data["settings"]["detectors"] == {"mtcnn": "mtcnn"}


@pytest.mark.slow  # evaluates every shared photo
def test_blur_and_pixelation_hide_faces(degraded):
    report, _, _ = degraded
    runs = report.runs
    for name in ("self", "blur-heavy", "pixelate-8x8"):
        assert runs[name]["counts"]["faces"] == 43 and runs[name]["counts"]["photos_missing"] == 0
    assert runs["self"]["detection_rate"]["hog"] == 1.0 and runs["self"]["reid_rate"]["dlib"] == 1.0
    blur, pix = runs["blur-heavy"], runs["pixelate-8x8"]
    # heavy blur: detection and re-identification collapse
    assert blur["detection_rate"]["hog"] <= 0.1
    assert blur["reid_rate"]["dlib"] <= 0.1 and blur["rank1_identification"]["dlib"] <= 0.2
    # 8x8 pixelation: dlib finds almost nothing
    assert pix["detection_rate"]["hog"] <= 0.05
    assert pix["details"]["detection"]["hog"]["anon_detections"] <= 2
    assert pix["reid_rate"]["dlib"] <= 0.1
    assert blur["landmark_nme"] > 0.02 and pix["attribute_agreement"]["mean"] < 1.0


@pytest.mark.slow  # evaluates every shared photo
def test_mtcnn_rarely_finds_heavily_blurred_faces(degraded, cache):
    require_mtcnn()
    _, _, root = degraded
    report = evaluate(EvalConfig(real=root / "real", anon=(root / "blur",), names=("blur-heavy",),
                                 detectors=("mtcnn",), **FAST), cache=cache)
    blur = report.runs["blur-heavy"]
    assert blur["counts"]["detection_rate"]["mtcnn"] >= 30  # MTCNN finds most of the 43 real faces
    assert blur["detection_rate"]["mtcnn"] <= 0.3


@pytest.mark.slow  # evaluates every shared photo
def test_report_files(degraded):
    report, paths, root = degraded
    data = json.loads(paths["json"].read_text())
    assert data["format"] == "falco-eval/1" and list(data["runs"]) == ["self", "blur-heavy", "pixelate-8x8"]
    for run in data["runs"].values():
        for group in ("detection_rate", "reid_rate", "rank1_identification", "attribute_agreement"):
            for key, value in run[group].items():
                assert value is None or 0.0 <= value <= 1.0, (group, key)
                if value is None:
                    assert f"{group}.{key}" in run["not_computed"]
        assert run["fid"] is None and run["not_computed"]["fid"]
        assert run["counts"]["reid_rate"]["dlib"] == run["counts"]["faces"]
        assert len(run["examples"]) == 4
        for ex in run["examples"]:
            assert (root / "report" / ex["real"]).is_file() and (root / "report" / ex["anon"]).is_file()
    md = paths["md"].read_text()
    assert re.search(r"^\| run \| faces \| detection HOG", md, re.M)
    for name in ("self", "blur-heavy", "pixelate-8x8"):
        assert re.search(rf"^\| {re.escape(name)} \| 43 \| ", md, re.M)
    assert "Euclidean distance < 0.6" in md
    rows = [json.loads(line) for line in paths["faces"].read_text().splitlines()]
    assert len(rows) == 3 * 43 and {"reid.dlib", "landmark_nme", "attributes"} <= set(rows[0])


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None


@pytest.mark.slow  # evaluates every shared photo
def test_report_html_in_headless_chromium(degraded, tmp_path):
    browser = _chromium()
    if browser is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("chromium is not installed (.ci/run installs it with apt-get)")
        pytest.skip("chromium is not installed: `sudo apt-get install chromium` (Debian/Ubuntu) runs this test")
    _, paths, _ = degraded
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--no-first-run", "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
           "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000", "--dump-dom",
           paths["html"].resolve().as_uri()]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    dom = res.stdout
    root = re.search(r"<html[^>]*>", dom).group(0)
    attrs = dict(re.findall(r'data-([a-z-]+)="([^"]*)"', root))
    assert attrs.get("ready") == "yes", root
    assert int(attrs["images"]) == 3 * 4 * 2 and attrs["images-broken"] == "0" and attrs["errors"] == "0", root
    console = [line for line in res.stderr.splitlines() if ":CONSOLE" in line]
    assert not console, console
    assert dom.count("<svg") >= 3 and "blur-heavy" in dom


# ---------------------------------------------------------------- other paths
def test_cnn_detector_on_small_photos(faces_dir, cache, tmp_path):
    real = _link_subset(faces_dir, tmp_path / "real", SMALL_PHOTOS)
    report = evaluate(EvalConfig(real=real, anon=(real,), detectors=("cnn:0",), **FAST), cache=cache)
    run = report.runs["real"]
    assert run["detection_rate"]["cnn"] == 1.0 and run["counts"]["detection_rate"]["cnn"] >= 5
    assert report.data["settings"]["detectors"]["cnn"] == "cnn:0"


@pytest.mark.slow  # evaluates every shared photo
def test_manifest_pairing_and_user_labels(faces_dir, self_report, cache, tmp_path):
    """--pairs: faces come from an anonymize manifest; --labels: scored against the anonymized faces."""
    run_dir = tmp_path / "run"
    names = ("2008_001322.jpg", "2008_002470.jpg", "dogs.jpg")
    _link_subset(faces_dir, run_dir, names[:2])
    _link_subset(faces_dir, run_dir / "out", names[2:])  # an output path the manifest records
    rows = [r for r in self_report.faces["self"] if r["source"] in names]
    from falco.align import detect_and_align

    with RunManifest(run_dir) as manifest:
        manifest.start_run("anonymize", {})
        for name in names:
            faces = detect_and_align(load_image(faces_dir / name))
            outputs = {"photo": f"out/{name}"} if name == "dogs.jpg" else {}
            manifest.record_input(name, "done" if faces else "no_face", outputs=outputs, faces=[
                {"box": list(f.box), "landmarks": f.landmarks.tolist(), "quad": f.quad.tolist(),
                 "status": "failed" if (name, i) == ("2008_002470.jpg", 1) else "done"} for i, f in enumerate(faces)])
    labels = tmp_path / "labels.csv"
    pred = {(r["source"], r["face_index"]): r["attributes"]["real"] for r in rows}
    lines = ["source,face_index,mouth_open,yaw,Wearing_Hat"]
    lines += [f"{s},{i},{'1' if p['mouth_open'] == 'open' else '0'},{p['yaw']},1" for (s, i), p in pred.items()]
    labels.write_text("\n".join(lines) + "\n")
    real = _link_subset(faces_dir, tmp_path / "real", names)
    report = evaluate(EvalConfig(real=real, anon=(run_dir,), pairs=(run_dir / "manifest.sqlite",), labels=labels,
                                 detectors=("hog",), **FAST), cache=cache)
    run = report.runs["run"]
    assert run["pairing"].startswith("manifest:")
    assert run["counts"]["photos"] == 3 and run["counts"]["faces"] == len(rows) == 9
    assert run["counts"]["photos_missing"] == 0 and run["counts"]["manifest_faces_without_geometry"] == 0
    assert run["counts"]["face_status"] == {"done": 8, "failed": 1}
    assert run["reid_rate"]["dlib"] == 1.0 and run["landmark_nme"] == pytest.approx(0.0, abs=1e-3)
    assert run["label_accuracy"] == {"mouth_open": 1.0, "yaw": 1.0, "mean": 1.0}
    assert run["counts"]["label_accuracy"]["faces_with_labels"] == 9
    assert "no classifier predicts" in run["not_computed"]["label_accuracy.Wearing_Hat"]


def test_optional_models_from_a_model_set(faces_dir, cache, tmp_path, monkeypatch):
    """ArcFace (tiny set: flagged as meaningless), the FaRL CelebA head and FID, on two photos."""
    import torch

    from falco.evaluation.quality import random_fid_inception_state
    from falco.models.tiny import write_tiny_model_set
    from tests.test_evaluation import tiny_facer_checkpoint

    models = tmp_path / "models"
    write_tiny_model_set(models)
    torch.save(tiny_facer_checkpoint(), models / "face_attribute.farl.celeba.pt")
    torch.save(random_fid_inception_state(), models / "pt_inception-2015-12-05-6726825d.pth")
    real = _link_subset(faces_dir, tmp_path / "real", ("2008_001009.jpg",))
    report = evaluate(EvalConfig(real=real, anon=(real,), detectors=("hog",), models=models, examples=1), cache=cache)
    run = report.runs["real"]
    assert run["reid_rate"]["arcface"] == 1.0 and run["rank1_identification"]["arcface"] == 1.0
    assert any("not meaningful" in n for n in report.data["notes"])
    assert "TINY RANDOM" in report.data["settings"]["recognizers"]["arcface"]
    assert run["attribute_agreement"]["Smiling"] == 1.0 and len(run["attribute_agreement"]) == 5 + 40 + 1
    assert run["counts"]["fid"] == 2 and run["fid"] == pytest.approx(0.0, abs=1e-3)
    assert run["kid"] == pytest.approx(0.0, abs=1e-3)


def test_missing_photos_and_mtcnn_are_reported(faces_dir, cache, tmp_path, monkeypatch):
    monkeypatch.setattr(detection_mod, "mtcnn_available", lambda: "facenet-pytorch is not installed")
    real = _link_subset(faces_dir, tmp_path / "real", ("2008_001009.jpg", "dogs.jpg"))
    anon = _link_subset(faces_dir, tmp_path / "anon", ("2008_001009.jpg",))
    report = evaluate(EvalConfig(real=real, anon=(anon,), detectors=("hog", "mtcnn"), **FAST), cache=cache)
    run = report.runs["anon"]
    assert run["counts"]["photos_missing"] == 1 and run["problems"] == ["dogs.jpg: no anonymized photo"]
    assert run["detection_rate"]["mtcnn"] is None
    assert run["not_computed"]["detection_rate.mtcnn"] == "facenet-pytorch is not installed"


def test_cli_eval_attributes(faces_dir, tmp_path, capsys):
    from falco.cli import main

    real = _link_subset(faces_dir, tmp_path / "real", ("2008_001009.jpg",))
    out = tmp_path / "report"
    with pytest.raises(SystemExit) as exit_info:
        main(["eval-attributes", "--real", str(real), "--anon", str(real), "--name", "copy", "--out", str(out),
              "--detectors", "hog", "--recognizers", "dlib", "--classifiers", "landmarks", "--no-fid",
              "--device", "cpu", "--examples", "1", "--upsample", "0"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 0, err
    assert "| copy | 2 | 100.0 %" in err and "report: " in err
    data = json.loads((out / "report.json").read_text())
    assert data["runs"]["copy"]["reid_rate"]["dlib"] == 1.0 and data["settings"]["reference_detector"] == "hog:0"
    assert (out / "report.html").is_file() and (out / "report.md").is_file()
    with pytest.raises(SystemExit) as exit_info:
        main(["eval-attributes", "--real", str(tmp_path / "nope"), "--anon", str(real), "--out", str(out)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "--real" in err and "Traceback" not in err
