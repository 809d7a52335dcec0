"""``falco eval-attributes`` on videos (falco.evaluation.video): tOF/tLP, PSNR/LPIPS, re-ID, detection and
identity consistency per video and overall, through the CLI, on clips made here from a shared photo."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from falco.run.image_files import load_image
from falco.video.io import iter_frames
from falco.video.synth import make_clip, pan_frames
from tests.conftest import shared_path

FRAMES = 8
SIZE = (200, 240)  # width, height


def _frames(n: int = FRAMES, size: tuple[int, int] = SIZE) -> list[np.ndarray]:
    """A slow pan and zoom over the two faces of 2008_001009.jpg."""
    photo = load_image(shared_path("data", "faces", "2008_001009.jpg"))
    return pan_frames(photo, n, size, window=(80, 70, 280, 310), pan=(1.5, 0.5), zoom=0.004)


def _cli(*args: str):
    from typer.testing import CliRunner

    from falco.cli import app

    return CliRunner().invoke(app, list(args))


def _evaluate(real: Path, anon: Path, out: Path, models: Path, *extra: str, progress: bool = False):
    res = _cli("eval-attributes", "--real", str(real), "--anon", str(anon), "--out", str(out), "--detectors", "hog",
               "--recognizers", "dlib", "--classifiers", "landmarks", "--no-fid", "--models", str(models),
               "--no-cache", *(() if progress else ("--no-progress",)), *extra)
    assert res.exit_code == 0, res.output
    report = json.loads((out / "report.json").read_text(),
                        parse_constant=lambda c: pytest.fail(f"report.json holds {c}"))  # no NaN / Infinity
    return res, report


def _random_lpips(monkeypatch):
    """LPIPS with random weights (its two files are not in the tiny model set); returns the network."""
    import falco.models.lpips as lpips_module

    net = lpips_module.LPIPS().eval()
    monkeypatch.setattr(lpips_module, "load_lpips", lambda models=None, **_: net)
    return net


@pytest.fixture(scope="module")
def clips(tmp_path_factory, tiny_models) -> dict[str, Path]:
    """The real clip, and the clip anonymized by ``falco anonymize --method blur`` (the CLI, the tiny model set)."""
    d = tmp_path_factory.mktemp("eval-video")
    (d / "in").mkdir()
    real = make_clip(d / "in" / "clip.mp4", _frames(), fps=24)
    res = _cli("anonymize", str(real), "--out", str(d / "blur"), "--method", "blur", "--models", str(tiny_models),
               "--device", "cpu", "--no-progress", "--guard", "off")
    assert res.exit_code == 0, res.output
    return {"real": real, "blur": d / "blur" / "clip.mp4", "root": d}


def test_a_blurred_clip_gets_the_video_section(clips, tiny_models, tmp_path, one_thread):
    from falco.faces.pipeline import detect_and_align

    res, report = _evaluate(clips["real"], clips["blur"], tmp_path / "report", tiny_models, progress=True)
    assert report["runs"] == {}  # videos only: no photo run
    run = report["video"]["runs"]["clip.mp4"]
    assert run["problems"] == [] and list(run["videos"]) == ["clip.mp4"]
    video, overall = run["videos"]["clip.mp4"], run["overall"]
    assert (video["frames"], video["sampled_frames"], video["frame_pairs"]) == (FRAMES, FRAMES // 2, FRAMES // 2 - 1)
    assert math.isfinite(video["tOF"]) and video["tOF"] > 0  # the blurred faces do not move as the real ones
    assert math.isfinite(video["psnr"]) and 10 < video["psnr"] < 60
    # LPIPS is not in the tiny set: reported as not computed, with the reason, in the JSON and report.md
    assert video["tLP"] is None and video["lpips"] is None
    assert video["not_computed"]["tLP"].startswith("LPIPS is not installed")
    assert report["not_installed"] == {"video lpips": ["video.lpips", "video.tLP"]}
    # the faces counted are the reference detector's on the measured real frames
    real_frames = [rgb for t, rgb, _ in iter_frames(clips["real"]) if t % 2 == 0]
    assert video["faces"] == sum(len(detect_and_align(f, size=64, detector="hog")) for f in real_frames) >= 6
    assert 0.0 <= video["reid_rate"]["dlib"] <= 1.0 and 0.0 <= video["detection_rate"]["hog"] <= 1.0
    counts = video["detection_counts"]["hog"]
    assert video["detection_rate"]["hog"] == counts["detected"] / counts["real"]
    ident = video["identity"]["dlib"]
    assert ident["tracks"] == 2 and ident["samples"] == video["faces"]
    for key in ("spread_anon", "spread_real"):
        assert 0.0 <= ident[key] < 1.0
    for key in ("consistency_anon", "consistency_real"):
        assert 0.0 <= ident[key] <= 1.0
    assert ident["consistency_real"] == 1.0  # dlib calls a real face the same person from sample to sample
    for key in ("tOF", "psnr", "reid_rate", "detection_rate", "identity"):
        assert overall[key] == video[key]  # one video: overall = its figures
    # the text summary and report.md show our figures beside the published ones, with their source
    published = report["video"]["published"]
    assert published["methods"]["ciagan"]["tOF"] == 0.22 and "issue 21" in published["source"]
    md = (tmp_path / "report" / "report.md").read_text()
    for text in (res.output, md):
        assert "| clip.mp4 | 4/8 | " + f"{video['tOF']:.2f} | n/a | {video['psnr']:.2f} | n/a |" in text
        assert "| ciagan (published) | — | 0.22 | 1.65 | 25.99 | 0.077 |" in text
        assert "| segmentation-based anonymizer (published) | — | 1.02 | 5.97 | 21.66 | 0.133 |" in text
    assert "Published figures: Temporal figures quoted in falco issue 21" in md
    assert "`tLP, lpips` not computed: LPIPS is not installed" in md
    assert "<h2>Videos</h2>" in (tmp_path / "report" / "report.html").read_text()
    assert re.search(r"videos: 100%.*\b8/8 \[.*(frame/s|s/frame)", res.output)  # the progress bar counts frames


def test_the_same_video_gives_zero_and_no_infinite_psnr(clips, tiny_models, tmp_path, monkeypatch, one_thread):
    _random_lpips(monkeypatch)
    _, report = _evaluate(clips["real"], clips["real"], tmp_path / "report", tiny_models)
    video = report["video"]["runs"]["clip.mp4"]["videos"]["clip.mp4"]
    assert video["tOF"] == 0.0 and video["tLP"] == 0.0 and video["lpips"] == 0.0
    assert video["psnr"] is None and video["identical_frames"] == FRAMES // 2
    assert video["not_computed"]["psnr"].startswith("infinite: 4 of 4 measured frames are identical")
    assert video["reid_rate"]["dlib"] == 1.0 and video["detection_rate"]["hog"] == 1.0
    ident = video["identity"]["dlib"]
    assert ident["spread_anon"] == ident["spread_real"] and ident["consistency_anon"] == 1.0
    assert "video lpips" not in report["not_installed"]


def _tecogan(real: Path, anon: Path, net) -> dict[str, float]:
    """tOF, tLP, PSNR and LPIPS over every frame, written out here as TecoGAN's metrics.py computes them: its crop
    of a 200 x 240 frame (rows 8-232, columns 20-180), Farneback flows and the mean length of their difference,
    100 x the difference of consecutive frames' LPIPS, PSNR on the BT.601 luma."""
    import cv2
    import torch

    def crop(x: np.ndarray) -> np.ndarray:
        return x[8:232, 20:180]

    def lp(x: np.ndarray, y: np.ndarray) -> float:
        tx, ty = (torch.from_numpy(crop(v).astype(np.float32) / 127.5 - 1).permute(2, 0, 1)[None] for v in (x, y))
        with torch.no_grad():
            return float(net(tx, ty)[0])

    rgb = [[f for _, f, _ in iter_frames(p)] for p in (real, anon)]
    grey = [[cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in v] for v in rgb]
    tof, tlp, psnr, lpips = [], [], [], []
    for t in range(len(rgb[0])):
        y = [crop(v[t]).astype(np.float64) @ [0.256788235294118, 0.504129411764706, 0.097905882352941] for v in rgb]
        psnr.append(20 * np.log10(255 / np.sqrt(np.mean((y[0] - y[1]) ** 2))))
        lpips.append(lp(rgb[0][t], rgb[1][t]))
        if t:
            f = [crop(cv2.calcOpticalFlowFarneback(g[t - 1], g[t], None, 0.5, 3, 15, 3, 5, 1.2, 0)) for g in grey]
            tof.append(np.sqrt(((f[0] - f[1]) ** 2).sum(axis=-1)).mean())
            tlp.append(100 * abs(lp(rgb[0][t - 1], rgb[0][t]) - lp(rgb[1][t - 1], rgb[1][t])))
    return {"tOF": float(np.mean(tof)), "tLP": float(np.mean(tlp)), "psnr": float(np.mean(psnr)),
            "lpips": float(np.mean(lpips))}


def test_a_clip_one_frame_late_has_the_figures_computed_here(tmp_path, tiny_models, monkeypatch, one_thread):
    net = _random_lpips(monkeypatch)
    frames = _frames()
    real = make_clip(tmp_path / "real.mp4", frames, fps=24, audio=False)
    late = make_clip(tmp_path / "late.mp4", [frames[0]] + frames[:-1], fps=24, audio=False)
    _, report = _evaluate(real, late, tmp_path / "report", tiny_models, "--video-every", "1")
    video = report["video"]["runs"]["late.mp4"]["videos"]["real.mp4"]
    assert video["sampled_frames"] == FRAMES and video["frame_pairs"] == FRAMES - 1
    expected = _tecogan(real, late, net)
    assert expected["tOF"] > 0.1  # the late clip stands still between its first two frames
    assert expected["tLP"] > 0
    for key in ("tOF", "tLP", "psnr", "lpips"):
        assert video[key] == pytest.approx(expected[key], rel=1e-5, abs=1e-7), key


def test_mismatched_pairs_give_one_line_and_the_others_go_on(clips, tiny_models, tmp_path, one_thread):
    frames = _frames()
    real, anon = tmp_path / "real", tmp_path / "anon"
    for d in (real / "cam", anon / "cam"):
        d.mkdir(parents=True)
    for name in ("short.mp4", "small.mp4", "good.mp4"):
        shutil.copy(clips["real"], real / "cam" / name)
    make_clip(anon / "cam" / "short.mp4", frames[:6], fps=24, audio=False)
    make_clip(anon / "cam" / "small.mp4", [f[:200, :160] for f in frames], fps=24, audio=False)
    shutil.copy(clips["blur"], anon / "cam" / "good.mp4")
    shutil.copy(clips["real"], real / "cam" / "missing.mp4")
    photo = shared_path("data", "faces", "2009_004587.jpg")
    shutil.copy(photo, real / "photo.jpg")  # a photo beside the videos: the photo metrics, as before
    shutil.copy(photo, anon / "photo.jpg")
    res, report = _evaluate(real, anon, tmp_path / "report", tiny_models)
    run = report["video"]["runs"]["anon"]
    assert list(run["videos"]) == ["cam/good.mp4"] and math.isfinite(run["overall"]["tOF"])
    assert run["overall"]["tOF"] == report["video"]["runs"]["anon"]["videos"]["cam/good.mp4"]["tOF"]
    assert run["counts"] == {"videos": 4, "evaluated": 1} and len(run["problems"]) == 3
    for name, words in (("cam/short.mp4", "6 frames of 200x240"), ("cam/small.mp4", "8 frames of 160x200"),
                        ("cam/missing.mp4", "no anonymized video")):
        lines = [line for line in res.output.splitlines() if line.startswith(f"anon: {name}:")]
        assert len(lines) == 1 and words in lines[0], res.output
        assert sum(p.startswith(f"{name}:") and "\n" not in p for p in run["problems"]) == 1
    assert report["runs"]["anon"]["counts"]["faces"] >= 1  # the photo was evaluated too
    assert "anon: cam/short.mp4" in (tmp_path / "report" / "report.md").read_text()


def test_a_folder_of_videos_against_a_file_is_refused(clips, tiny_models, tmp_path, capsys):
    from falco.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["eval-attributes", "--real", str(clips["real"].parent), "--anon", str(clips["blur"]), "--out",
              str(tmp_path / "r"), "--models", str(tiny_models), "--no-progress", "--no-cache"])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and "\n" not in err
    assert err.startswith("error: --anon") and err.endswith("is a folder: give two videos or two folders")
