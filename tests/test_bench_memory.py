"""scripts/bench_memory.py: the fake-tensor memory estimate tracks real tensor memory."""

from __future__ import annotations


import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from falco.latent.optimise import FalcoParams
from falco.models.arcface import tiny_arcface
from falco.models.farl import FaRLConfig, FaRLEncoder, build_visual
from falco.models.stylegan2 import Generator
from tests.conftest import load_script

bench_memory = load_script("bench_memory")


def tiny_networks():
    """32-px generator (8 ws), 1-unit-per-stage IR-SE ArcFace, 2-layer 32-px FaRL."""
    G = Generator(img_resolution=32, w_dim=32, num_mapping_layers=2,
                  channels={4: 32, 8: 32, 16: 16, 32: 8}).eval().requires_grad_(False)
    farl = FaRLEncoder(build_visual(FaRLConfig(width=64, layers=2, heads=1, patch_size=8,
                                               image_resolution=32, output_dim=32)))
    return G, tiny_arcface(), farl


PARAMS = FalcoParams(steps=1)


@pytest.mark.parametrize("fake", [False, True])
def test_tracker_counts_allocations_and_frees(fake: bool) -> None:
    with FakeTensorMode() if fake else torch.device("cpu"), bench_memory.LiveTensorMemory(block=1) as mem:
        a = torch.ones(1024)  # 4 KiB
        b = a * 2  # 8 KiB live: the peak
        del a
        assert mem.current == 4096
        c = (b + 1).view(2, 512)  # a view holds its storage
        del b
        assert mem.current == 4096
        del c
    assert mem.current == 0
    assert mem.peak == 8192
    with bench_memory.LiveTensorMemory() as mem:  # CUDA's 512-byte blocks
        x = torch.ones(3)
        assert mem.current == 512
    del x


@pytest.fixture(scope="module")
def tiny_estimates() -> dict[bool, list]:
    return {fake: bench_memory.estimate(tiny_networks, [1, 4], PARAMS, fake=fake) for fake in (False, True)}


def test_fake_estimate_matches_real_cpu_tensors(tiny_estimates) -> None:
    real, fake = tiny_estimates[False], tiny_estimates[True]
    assert [r.batch for r in real] == [r.batch for r in fake] == [1, 4]
    for r, f in zip(real, fake):
        assert not r.fake and f.fake
        assert (r.weights, r.inputs) == (f.weights, f.inputs)
        # the loop's own memory is a large part of the peak, so agreeing on it means something
        assert r.activations > 0.25 * r.peak
        assert abs(f.activations - r.activations) <= 0.1 * r.activations
        assert abs(f.peak - r.peak) <= 0.1 * r.peak
        assert f.trainable == r.trainable > 0


def test_estimate_grows_with_batch(tiny_estimates) -> None:
    one, four = tiny_estimates[True]
    assert four.peak > one.peak
    assert four.inputs == 4 * one.inputs
    assert four.weights == one.weights
    # activations are per face: 4 faces hold (nearly) 4 times as much
    assert 3.0 * one.activations < four.activations <= 4.4 * one.activations


def test_largest_fitting() -> None:
    rows = [bench_memory.MemoryEstimate(resolution=64, batch=b, fake=True, weights=100, inputs=0,
                                        trainable=0, peak=100 + 10 * b) for b in (1, 2, 4, 8)]
    assert bench_memory.largest_fitting(rows, usable=150) == (4, 5)
    assert bench_memory.largest_fitting(rows, usable=105) == (None, 0)
    assert bench_memory.largest_fitting(rows, usable=1000) == (8, 90)
