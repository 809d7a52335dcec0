"""``falco eval-attributes --protocol ciagan|deepprivacy`` and the papers' baseline presets."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from falco.align import detect_and_align
from falco.errors import InputError
from falco.evaluation import EvalConfig, evaluate, write_report
from falco.evaluation import detection as detection_mod
from falco.evaluation.common import image_digest
from falco.evaluation.protocols import check_protocol, load_published, published_for
from falco.evaluation.protocols.ciagan import ciagan_crop, clr_window
from falco.methods import get_anonymizer
from falco.methods.classic import ciagan_test_crop, ciagan_window
from falco.run.image_files import load_image, save_image
from tests.conftest import shared_path

PER_ID = 3


def test_published_figures_are_package_data():
    data = load_published()
    assert set(data) >= {"ciagan", "deepprivacy", "falco"}
    assert published_for("ciagan", "ciagan-9x9") == ("blur-9x9", {"detection_rate": {"dlib": 0.906}})
    assert published_for("ciagan", "Blur-17x17")[1]["detection_rate"]["dlib"] == 0.684
    assert published_for("ciagan", "pix8")[0] == "pixelization-8x8"
    assert published_for("ciagan", "my-run") == (None, {})
    assert published_for("deepprivacy", "deepprivacy-8x8") == (None, {})  # no comparable figure
    for entry in data["ciagan"]["methods"].values():
        assert all(0 <= v <= 1 for k, v in entry.items() if k != "aliases")


def test_check_protocol():
    assert check_protocol("ciagan") == "ciagan"
    with pytest.raises(InputError, match="--protocol must be one of falco, ciagan, deepprivacy, got 'x'"):
        check_protocol("x")


def test_ciagan_crop_geometry():
    rng = np.random.default_rng(0)
    clr = rng.integers(0, 256, (218, 178, 3), dtype=np.uint8)
    crop = ciagan_test_crop(clr)
    ref = np.asarray(Image.fromarray(clr).resize((144, 144), Image.Resampling.LANCZOS).crop((8, 8, 136, 136)))
    assert crop.shape == (128, 128, 3) and np.array_equal(crop, ref)
    assert ciagan_crop(crop) is crop  # a test crop already
    lm = np.zeros((68, 2))
    lm[39], lm[42] = (90, 100), (110, 100)  # eye corners 20 px apart -> h_r = 100, w_r = 81
    assert clr_window(lm) == (100 - 81, 0, 100 + 81, 200)
    x0, y0, x1, y1 = ciagan_window(lm)
    assert (x1 - x0) == pytest.approx(162 * 128 / 144) and (y1 - y0) == pytest.approx(200 * 128 / 144)
    assert ((x0 + x1) / 2, (y0 + y1) / 2) == (100, 100)
    with pytest.raises(InputError, match="face window"):
        ciagan_crop(np.zeros((300, 300, 3), np.uint8))


@pytest.fixture(scope="module")
def celeba(tmp_path_factory):
    """Two identities x PER_ID CIAGAN clr crops, and anonymized copies: itself, grey, ciagan-17x17, ciagan-16x16."""
    src = shared_path("data", "celeba-ids", "clr")
    root = tmp_path_factory.mktemp("ciagan")
    real = root / "real"
    for ident in ("0", "1"):
        (real / ident).mkdir(parents=True)
        for p in sorted((src / ident).glob("*.jpg"))[:PER_ID]:
            shutil.copy(p, real / ident / p.name)
    out = {"real": real}
    for name, make in (("grey", None), ("ciagan-17x17", ("blur", "ciagan-17x17")),
                       ("ciagan-16x16", ("pixelate", "ciagan-16x16"))):
        for p in sorted(real.rglob("*.jpg")):
            img = load_image(p)
            if make is None:
                new = np.full_like(img, 128)
            else:
                faces = detect_and_align(img, size=256)
                assert faces, p
                new, _ = get_anonymizer(make[0], preset=make[1]).apply(img, faces[:1], [None])
            dst = root / name / p.relative_to(real).with_suffix(".png")
            dst.parent.mkdir(parents=True, exist_ok=True)
            save_image(dst, new)
        out[name] = root / name
    return out


def test_ciagan_protocol(celeba, tmp_path, monkeypatch):
    calls = []
    boxes = detection_mod.DlibEvalDetector.boxes
    monkeypatch.setattr(detection_mod.DlibEvalDetector, "boxes",
                        lambda det, image: calls.append((det.spec, image.shape, image_digest(image)))
                        or boxes(det, image))
    cfg = EvalConfig(real=celeba["real"], anon=(celeba["real"], celeba["grey"], celeba["ciagan-17x17"],
                                               celeba["ciagan-16x16"]),
                     names=("self", "grey", "ciagan-17x17", "ciagan-16x16"), recognizers=("dlib",),
                     protocol="ciagan", progress=False, disk_cache=tmp_path / "cache")
    report = evaluate(cfg)
    assert {c[0] for c in calls} == {"hog:1"} and {c[1] for c in calls} == {(128, 128, 3)}
    runs = report.runs
    n = 2 * PER_ID
    real_found = runs["self"]["details"]["detection"]["dlib"]["real_crops_with_face"]
    assert real_found >= n - 1
    assert runs["self"]["detection_rate"]["dlib"] == real_found / n
    assert runs["self"]["reid_rate"]["dlib"] == 1.0
    assert runs["self"]["rank1_identification"]["dlib"] == 1.0  # other photos of the same person are nearest
    assert runs["self"]["details"]["identification"]["dlib"] == {"identities": 2, "chance": 0.5, "crops": n}
    assert runs["grey"]["detection_rate"]["dlib"] == 0.0 and runs["grey"]["reid_rate"]["dlib"] == 0.0
    assert runs["ciagan-16x16"]["detection_rate"]["dlib"] == 0.0
    assert runs["ciagan-17x17"]["detection_rate"]["dlib"] < runs["self"]["detection_rate"]["dlib"] + 1e-9
    assert runs["ciagan-17x17"]["published"] == {"detection_rate": {"dlib": 0.684}}
    assert "published" not in runs["self"] and runs["self"]["published_method"] is None
    assert "detection_rate.ssh" in runs["grey"]["not_computed"]
    paths = write_report(report, tmp_path / "report")
    md = paths["md"].read_text()
    assert "detection dlib ↑ (published)" in md and "| ciagan-17x17 | 6 |" in md and "68.4 %" in md
    assert "Protocol ciagan" in md and "process_data.py" in md
    data = json.loads(paths["json"].read_text())
    assert data["protocol"] == "ciagan" and data["settings"]["detectors"] == {"dlib": "hog:1"}
    assert len(paths["faces"].read_text().splitlines()) == 4 * n
    # a second run reads the real crops' analysis from disk: the detector only sees anonymized crops
    real_crops = {image_digest(ciagan_crop(load_image(p))) for p in celeba["real"].rglob("*.jpg")}
    assert len(real_crops) == n and real_crops <= {c[2] for c in calls}
    calls.clear()
    again = evaluate(cfg)
    assert calls and not real_crops & {c[2] for c in calls}, "the real crops were analysed again"
    assert {k: r["detection_rate"] for k, r in again.runs.items()} == {k: r["detection_rate"] for k, r in runs.items()}


def test_ciagan_protocol_rejects_other_sizes(celeba, tmp_path):
    odd = tmp_path / "odd" / "0"
    odd.mkdir(parents=True)
    for p in sorted((celeba["real"] / "0").glob("*.jpg")):
        save_image(odd / p.name, np.zeros((100, 90, 3), np.uint8))
    report = evaluate(EvalConfig(real=celeba["real"], anon=(tmp_path / "odd",), names=("odd",), recognizers=("dlib",),
                                 protocol="ciagan", progress=False))
    assert any("expected 178x218" in p for p in report.runs["odd"]["problems"])


def test_deepprivacy_protocol(tmp_path):
    faces = shared_path("data", "faces")
    real = tmp_path / "real"
    real.mkdir()
    (real / "2008_001009.jpg").symlink_to(faces / "2008_001009.jpg")
    report = evaluate(EvalConfig(real=real, anon=(real,), names=("deepprivacy-8x8",), detectors=("hog",),
                                 protocol="deepprivacy", progress=False, examples=0))
    run = report.runs["deepprivacy-8x8"]
    assert run["detection_rate"]["hog"] == 1.0 and run["reid_rate"] == {} and "published" not in run
    assert report.data["protocol"] == "deepprivacy" and report.data["settings"]["detection_iou"] == 0.5
    assert any("Protocol deepprivacy" in n for n in report.data["notes"])
    with pytest.raises(InputError, match="--labels and --pairs belong to the falco protocol"):
        evaluate(EvalConfig(real=real, anon=(real,), labels=real / "x.csv", protocol="ciagan"))


def test_cli_protocol_and_cache(celeba, tmp_path):
    from typer.testing import CliRunner

    from falco.cli import app

    args = ["eval-attributes", "--real", str(celeba["real"]), "--anon", str(celeba["ciagan-16x16"]),
            "--name", "ciagan-16x16", "--protocol", "ciagan", "--recognizers", "dlib", "--no-progress"]
    runner = CliRunner()
    first = runner.invoke(app, [*args, "--out", str(tmp_path / "r1"), "--cache", str(tmp_path / "c")])
    assert first.exit_code == 0, first.output
    assert "| ciagan-16x16 | 6 | 0.0 % | 0.0 % |" in first.output
    assert f"cache {tmp_path / 'c'}: 0 real-side results reused" in first.output
    second = runner.invoke(app, [*args, "--out", str(tmp_path / "r2"), "--cache", str(tmp_path / "c")])
    assert second.exit_code == 0, second.output
    assert ", 0 written" in second.output and ": 0 real-side" not in second.output
    none = runner.invoke(app, [*args, "--out", str(tmp_path / "r3"), "--no-cache"])
    assert none.exit_code == 0 and "real-side results" not in none.output
    bad = runner.invoke(app, [*args, "--out", str(tmp_path / "r4"), "--no-cache", "--cache", str(tmp_path / "c")])
    assert bad.exit_code != 0 and "not both" in (bad.output + str(bad.exception))
    bad = runner.invoke(app, [*args, "--out", str(tmp_path / "r5"), "--protocol", "cigan"])
    assert bad.exit_code != 0 and "--protocol must be one of" in (bad.output + str(bad.exception))


def test_ciagan_protocol_refuses_detectors_and_says_workers_are_unused(celeba, tmp_path, caplog):
    base = dict(real=celeba["real"], anon=(celeba["grey"],), names=("grey",), recognizers=("dlib",),
                protocol="ciagan", progress=False)
    with pytest.raises(InputError, match=r"^--detectors mtcnn: --protocol ciagan detects with dlib's HOG \(hog:1\)"):
        evaluate(EvalConfig(**base, detectors=("mtcnn",)))
    with caplog.at_level("WARNING", logger="falco.evaluation.evaluate"):
        report = evaluate(EvalConfig(**base, workers=2))
    assert "--workers 2: not used by --protocol ciagan" in caplog.text
    assert report.runs["grey"]["detection_rate"]["dlib"] == 0.0
