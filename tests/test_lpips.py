"""Our LPIPS (falco.models.lpips) against the reference implementation, the PyPI ``lpips`` package.

The reference runs with its real v0.1 linear weights (inside its wheel) and a randomly
initialised AlexNet (``pnet_rand=True``: torchvision's ImageNet weights cannot be downloaded
here); ours loads the same tensors through the same state-dict keys torchvision and the lpips
repository publish, so the checkpoint path is the real one.
"""

from __future__ import annotations

import os

import pytest
import torch

from falco.errors import CheckpointError, InputError
from falco.models.lpips import LPIPS, load_lpips, lpips_from_state_dicts

lpips = pytest.importorskip("lpips", reason="the lpips package (test extra) is the reference") \
    if not os.environ.get("CI") else __import__("lpips")


@pytest.fixture(scope="module")
def reference():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        return lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False).eval()


def _backbone(ref) -> dict:
    """The reference's AlexNet slices as torchvision's ``alexnet().state_dict()`` names them."""
    out = {}
    for key, value in ref.net.state_dict().items():
        _, index, kind = key.split(".")[-3:]
        out[f"features.{index}.{kind}"] = value
    out["classifier.1.weight"] = torch.zeros(4096, 9216)  # in torchvision's file, ignored by LPIPS
    return out


def _lin_file() -> str:
    return os.path.join(os.path.dirname(lpips.__file__), "weights", "v0.1", "alex.pth")


@pytest.fixture(scope="module")
def ours(reference):
    lin = torch.load(_lin_file(), map_location="cpu", weights_only=True)
    return lpips_from_state_dicts(_backbone(reference), lin)


def _images(n=2, size=64, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1, torch.rand(n, 3, size, size, generator=g) * 2 - 1


def test_distance_matches_the_reference(reference, ours):
    a, b = _images()
    with torch.no_grad():
        expected = reference(a, b).flatten()
        got = ours(a, b)
    assert got.shape == (2,)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)
    assert float(ours(a, a).abs().max()) == 0.0


def test_spatial_map_matches_the_reference(reference, ours):
    a, b = _images(size=72, seed=2)
    with torch.no_grad():
        expected = reference(a, b, retPerLayer=False, normalize=False)
        ref_spatial = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False, spatial=True)
        ref_spatial.load_state_dict(reference.state_dict())
        expected_map = ref_spatial.eval()(a, b)[:, 0]
        got = ours(a, b, spatial=True)
    assert got.shape == (2, 72, 72)
    torch.testing.assert_close(got, expected_map, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(got.mean(dim=(1, 2)), expected.flatten())  # upsampled maps: not the plain mean


def test_bad_weights_and_inputs_are_clear_errors(reference):
    lin = torch.load(_lin_file(), map_location="cpu", weights_only=True)
    backbone = _backbone(reference)
    backbone["features.3.weight"] = torch.zeros(5, 5)
    with pytest.raises(CheckpointError, match="misshaped"):
        lpips_from_state_dicts(backbone, lin, source="x.pth")
    with pytest.raises(CheckpointError, match="missing"):
        lpips_from_state_dicts({}, lin)
    with pytest.raises(InputError, match="two"):
        LPIPS()(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 9, 8))


def test_load_lpips_reads_the_model_set(tmp_path, reference):
    from falco.errors import ModelNotFoundError

    with pytest.raises(ModelNotFoundError, match="lpips-alexnet"):
        load_lpips(tmp_path)
    torch.save(_backbone(reference), tmp_path / "alexnet-owt-7be5be79.pth")
    net = load_lpips(tmp_path)  # the linear weights come from the installed lpips wheel
    a, b = _images(seed=3)
    with torch.no_grad():
        torch.testing.assert_close(net(a, b), reference(a, b).flatten(), rtol=1e-4, atol=1e-6)
    (tmp_path / "alexnet-owt-7be5be79.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="alexnet-owt"):
        load_lpips(tmp_path)


# ----------------------------------------------------------------------------- LPIPS per face part
def test_lpips_per_part_is_zero_for_untouched_parts_and_largest_where_the_photo_changed(ours):
    import numpy as np

    from falco.evaluation.regions import part_changes, summarise_part_changes
    from falco.faces.blend import change_regions
    from tests.conftest import photo_with_faces

    photo, faces = photo_with_faces("2008_001009.jpg", 2)
    landmarks = [f.landmarks for f in faces]
    same = part_changes(photo, photo.copy(), landmarks, lpips=ours)
    assert all(v == 0.0 for row in same for v in row["lpips"].values() if v is not None)
    painted = change_regions(photo, np.zeros_like(photo), faces, ("mouth", "lips"), feather=0.0)
    rows = part_changes(photo, painted, landmarks, lpips=ours)
    for row in rows:
        assert row["mouth"] > 20 and row["eyes"] < 0.5  # grey levels, as without LPIPS
        assert row["lpips"]["mouth"] > 2 * row["lpips"]["eyes"] > 0  # receptive fields reach a little further
    run, counts, details = {}, {}, {}
    summarise_part_changes(run, counts, details, rows, parsing=False, lpips=True)
    assert run["region_lpips"]["mouth"] == pytest.approx(np.mean([r["lpips"]["mouth"] for r in rows]))
    assert "lpips" not in details["region_change"]["not_computed"] and "LPIPS" in details["region_change"]["measure"]
    run, counts, details = {}, {}, {}
    summarise_part_changes(run, counts, details, part_changes(photo, painted, landmarks), parsing=False)
    assert "region_lpips" not in run and "lpips-alexnet" in details["region_change"]["not_computed"]["lpips"]


def test_the_evaluation_loads_lpips_when_installed(tmp_path, reference):
    from falco.evaluation.tools import build_tools

    kwargs = dict(detectors=(), recognizers=(), classifiers=(), fid=False, models=tmp_path)
    tools = build_tools(**kwargs)
    assert tools.lpips is None and "lpips-alexnet" in tools.lpips_problem
    torch.save(_backbone(reference), tmp_path / "alexnet-owt-7be5be79.pth")
    tools = build_tools(**kwargs)
    assert isinstance(tools.lpips, LPIPS) and tools.lpips_problem is None
