"""RAFT for tOF (falco.models.raft): torchvision's raft_small on a model-set file, and --flow in eval-attributes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from falco.errors import CheckpointError, InputError, ModelNotFoundError
from falco.evaluation.temporal import choose_flow, flow
from falco.models.raft import RaftFlow, load_raft, raft_from_state_dict

FILE = "raft_small_C_T_V2-01064c6d.pth"


@pytest.fixture(scope="module")
def state():
    from torchvision.models.optical_flow import raft_small

    torch.manual_seed(0)
    return raft_small(weights=None).state_dict()


def _frames(h=36, w=52):
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (h + 8, w + 8, 3), dtype=np.uint8)
    return base[4:4 + h, 4:4 + w], base[4:4 + h, 6:6 + w]  # the second: the scene moved 2 px left


def test_raft_runs_on_frames_of_any_size_as_torchvision_computes_it(state):
    from torchvision.models.optical_flow import raft_small

    net = raft_from_state_dict(state)
    a, b = _frames()
    out = RaftFlow(net, updates=3)(a, b)
    assert out.shape == (36, 52, 2) and out.dtype == np.float32 and np.isfinite(out).all()
    ref = raft_small(weights=None)  # the same weights, inputs padded by hand to 128 x 128 (RAFT's smallest)
    ref.load_state_dict(state)
    ref.eval()
    x = [torch.nn.functional.pad(torch.from_numpy(f).permute(2, 0, 1)[None].float() / 127.5 - 1, (0, 76, 0, 92),
                                 mode="replicate") for f in (a, b)]
    with torch.no_grad():
        expected = ref(x[0], x[1], num_flow_updates=3)[-1][0, :, :36, :52].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_bad_weights_and_frames_are_one_line_errors(state, tmp_path):
    broken = dict(state)
    broken.pop(next(iter(broken)))
    with pytest.raises(CheckpointError, match="RAFT-small keys do not match"):
        raft_from_state_dict(broken, source="x.pth")
    with pytest.raises(ModelNotFoundError, match="raft-small"):
        load_raft(tmp_path)
    (tmp_path / FILE).write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=FILE):
        load_raft(tmp_path)
    raft = RaftFlow(raft_from_state_dict(state))
    with pytest.raises(InputError, match="different sizes"):
        raft(*[np.zeros((8, w, 3), np.uint8) for w in (8, 9)])
    with pytest.raises(InputError, match="uint8"):
        raft(np.zeros((8, 8, 3), np.float32), np.zeros((8, 8, 3), np.float32))


def test_flow_choice(state, tmp_path):
    fn, name = choose_flow("auto", tmp_path)
    assert fn is flow and "RAFT is not installed: falco models download raft-small" in name
    assert choose_flow("farneback", tmp_path) == (flow, "OpenCV Farneback (0.5, 3, 15, 3, 5, 1.2, 0) on grey frames")
    with pytest.raises(ModelNotFoundError):
        choose_flow("raft", tmp_path)
    with pytest.raises(InputError, match="--flow must be one of auto, farneback, raft"):
        choose_flow("lucas-kanade", tmp_path)
    torch.save(state, tmp_path / FILE)
    for choice in ("auto", "raft"):
        fn, name = choose_flow(choice, tmp_path)
        assert isinstance(fn, RaftFlow) and name.startswith("RAFT-small")


def test_eval_attributes_measures_tof_with_raft_when_installed(state, tmp_path, tiny_models, one_thread):
    """--flow raft through the CLI: the report says RAFT, and tOF is RAFT's, recomputed here."""
    import shutil

    from falco.evaluation.temporal import flow_difference
    from falco.video.io import iter_frames
    from falco.video.synth import make_clip
    from tests.test_eval_video import _evaluate, _frames

    models = tmp_path / "models"
    shutil.copytree(tiny_models, models)
    torch.save(state, models / FILE)
    frames = _frames(4)
    real = make_clip(tmp_path / "real.mp4", frames, fps=24, audio=False)
    late = make_clip(tmp_path / "late.mp4", [frames[0]] + frames[:-1], fps=24, audio=False)
    _, report = _evaluate(real, late, tmp_path / "report", models, "--video-every", "1", "--flow", "raft")
    video = report["video"]
    assert video["settings"]["flow"].startswith("RAFT-small")
    raft = load_raft(models)
    rgb = [[f for _, f, _ in iter_frames(p)] for p in (real, late)]
    expected = np.mean([flow_difference(raft(rgb[0][t - 1], rgb[0][t]), raft(rgb[1][t - 1], rgb[1][t]))
                        for t in range(1, 4)])
    overall = next(iter(video["runs"].values()))["overall"]
    assert overall["tOF"] == pytest.approx(expected, rel=1e-4) and overall["tOF"] > 0
