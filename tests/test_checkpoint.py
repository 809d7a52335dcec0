"""Safe checkpoint reading (weights_only, typed errors) and state-dict checks."""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

from falco.errors import CheckpointError
from falco.models import _checkpoint as ckpt_io


class _Opaque:
    """A custom class a checkpoint might pickle (weights_only must refuse it)."""

    def __init__(self) -> None:
        self.value = 1


def test_roundtrip_from_path_and_passthrough_of_a_dict(tmp_path: Path) -> None:
    data = {"a": torch.arange(3.0), "opts": {"stylegan_size": 1024, "name": "x"}}
    path = tmp_path / "ok.pt"
    torch.save(data, path)
    loaded = ckpt_io.load_checkpoint(path)
    assert torch.equal(loaded["a"], data["a"]) and loaded["opts"] == data["opts"]
    assert ckpt_io.load_checkpoint(str(path))["opts"]["stylegan_size"] == 1024
    assert ckpt_io.load_checkpoint(data) is data


@pytest.mark.parametrize("kind", ["missing", "directory", "empty", "truncated", "garbage"])
def test_unreadable_files_raise_checkpoint_error_naming_the_file(tmp_path: Path, kind: str) -> None:
    path = tmp_path / f"{kind}.pt"
    if kind == "directory":
        path.mkdir()
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        full = tmp_path / "full.pt"
        torch.save({"w": torch.randn(64, 64)}, full)
        path.write_bytes(full.read_bytes()[:300])
    elif kind == "garbage":
        path.write_bytes(b"definitely not a checkpoint " * 20)
    with pytest.raises(CheckpointError) as info:
        ckpt_io.load_checkpoint(path)
    assert str(path) in str(info.value)
    assert info.value.source == str(path)


def test_pickled_custom_class_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    path = tmp_path / "objects.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "extra": _Opaque()}, path)
    with pytest.raises(CheckpointError) as info:
        ckpt_io.load_checkpoint(path)
    msg = str(info.value)
    assert str(path) in msg
    assert "pickled Python objects" in msg and "_Opaque" in msg
    assert "weights_only=True" in msg and "torch.save" in msg  # says how to convert it


def test_argparse_namespace_opts_is_refused_naming_the_class(tmp_path: Path) -> None:
    path = tmp_path / "e4e_namespace.pt"
    torch.save({"state_dict": {"encoder.w": torch.zeros(2)}, "opts": argparse.Namespace(stylegan_size=1024)}, path)
    with pytest.raises(CheckpointError, match=r"argparse\.Namespace"):
        ckpt_io.load_checkpoint(path)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_plain_pickle_is_not_silently_unpickled(tmp_path: Path) -> None:
    path = tmp_path / "plain.pkl"
    with open(path, "wb") as f:
        pickle.dump({"w": [1.0, 2.0]}, f, protocol=4)
    with pytest.raises(CheckpointError, match="weights_only"):
        ckpt_io.load_checkpoint(path)


def test_safetensors_file_is_read(tmp_path: Path) -> None:
    st = pytest.importorskip("safetensors.torch")
    path = tmp_path / "w.safetensors"
    st.save_file({"w": torch.arange(4.0)}, str(path))
    assert torch.equal(ckpt_io.load_checkpoint(path)["w"], torch.arange(4.0))
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 40)
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        ckpt_io.load_checkpoint(bad)


def test_strip_prefix_and_unwrap() -> None:
    sd = {"encoder.a": 1, "encoder.b.c": 2, "decoder.a": 3}
    assert ckpt_io.strip_prefix(sd, "encoder.") == {"a": 1, "b.c": 2}
    assert ckpt_io.strip_prefix(sd, "") == sd
    assert ckpt_io.unwrap_state_dict({"state_dict": sd, "opts": {}}, "x") is sd
    assert ckpt_io.unwrap_state_dict(sd, "x") is sd
    with pytest.raises(CheckpointError, match="dict-like"):
        ckpt_io.unwrap_state_dict([1, 2], "f.pt")


def test_check_state_dict_reports_missing_unexpected_and_shapes() -> None:
    net = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    good = net.state_dict()
    ckpt_io.check_state_dict(good, dict(good), "f.pt")

    missing = {k: v for k, v in good.items() if k != "0.bias"}
    with pytest.raises(CheckpointError, match=r"missing 1 keys.*enc\.0\.bias"):
        ckpt_io.check_state_dict(good, missing, "f.pt", prefix="enc.")

    extra = {**good, "2.weight": torch.zeros(1)}
    with pytest.raises(CheckpointError, match=r"unexpected 1 keys.*2\.weight"):
        ckpt_io.check_state_dict(good, extra, "f.pt")
    ckpt_io.check_state_dict(good, extra, "f.pt", ignore_unexpected=True)

    wrong = {**good, "0.weight": torch.zeros(3, 5)}
    with pytest.raises(CheckpointError) as info:
        ckpt_io.check_state_dict(good, wrong, "f.pt", what="toy net")
    msg = str(info.value)
    assert msg.startswith("f.pt:") and "0.weight" in msg and "[3, 5]" in msg and "[3, 4]" in msg

    with pytest.raises(CheckpointError, match="expected a tensor"):
        ckpt_io.check_state_dict(good, {**good, "0.bias": [0.0, 0.0, 0.0]}, "f.pt")


def test_load_checked_into_an_empty_meta_module() -> None:
    src = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    src[1].running_mean.uniform_()
    state = src.state_dict()
    dst = ckpt_io.build_empty(lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)))
    assert next(dst.parameters()).is_meta
    ckpt_io.load_checked(dst, state, "<state dict>")
    assert not any(t.is_meta for t in dst.state_dict().values())
    assert all(torch.equal(dst.state_dict()[k], v) for k, v in state.items())
    assert all(p.requires_grad for p in dst.parameters())
    x = torch.randn(1, 3, 8, 8)
    assert torch.equal(dst.eval()(x), src.eval()(x))


def test_load_checked_casts_half_precision_checkpoints() -> None:
    src = nn.Linear(4, 2)
    half = {k: v.half() for k, v in src.state_dict().items()}
    dst = ckpt_io.load_checked(ckpt_io.build_empty(lambda: nn.Linear(4, 2)), half, "x")
    assert dst.weight.dtype == torch.float32
