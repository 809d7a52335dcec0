"""FAISS on the GPU when it has GPU support and sees a GPU, the CPU otherwise (falco.bank.gpu).

Runs without a GPU: faiss-gpu's entry points are monkeypatched (``knn_gpu`` and ``index_cpu_to_gpu``
stand-ins call the CPU code and record that they were used).
"""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from falco.bank import gpu
from falco.bank.index import FeatureIndex, exact_search
from falco.errors import InputError


@pytest.fixture
def no_gpu_faiss(monkeypatch):
    """faiss-cpu as shipped: no StandardGpuResources."""
    monkeypatch.delattr(faiss, "StandardGpuResources", raising=False)
    monkeypatch.delenv(gpu.FAISS_DEVICE_ENV, raising=False)


@pytest.fixture
def fake_gpu_faiss(monkeypatch):
    """faiss-gpu seeing one GPU; its GPU calls run the CPU code and are logged in the returned list."""
    calls = []

    class Resources:
        pass

    def knn_gpu(res, q, base, k, metric=faiss.METRIC_L2):
        calls.append("knn_gpu")
        assert isinstance(res, Resources)
        return faiss.knn(q, base, k, metric=metric)

    def index_cpu_to_gpu(res, device, index):
        calls.append("index_cpu_to_gpu")
        return index

    monkeypatch.setattr(faiss, "StandardGpuResources", Resources, raising=False)
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1)
    monkeypatch.setattr(faiss, "knn_gpu", knn_gpu, raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_gpu", index_cpu_to_gpu, raising=False)
    monkeypatch.delenv(gpu.FAISS_DEVICE_ENV, raising=False)
    gpu._resources.cache_clear()
    yield calls
    gpu._resources.cache_clear()


def _data(n=200, q=7, d=16):
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, d)).astype(np.float32), rng.standard_normal((q, d)).astype(np.float32)


def test_cpu_faiss_searches_on_the_cpu_and_says_why(no_gpu_faiss):
    assert gpu.search_device() == ("cpu", f"FAISS {faiss.__version__} has no GPU support "
                                          "(faiss-cpu; the gpu extra installs faiss-gpu)")
    with pytest.warns(RuntimeWarning, match=r"'cuda' was asked for, but FAISS .* no GPU support \(faiss-cpu.*\); using the CPU"):
        assert gpu.search_device("cuda")[0] == "cpu"
    info = gpu.faiss_info()
    assert info["gpu_support"] is False and info["gpus"] == 0 and info["device"] == "cpu"


def test_gpu_build_without_a_visible_gpu_uses_the_cpu(monkeypatch):
    monkeypatch.setattr(faiss, "StandardGpuResources", object, raising=False)
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 0)
    monkeypatch.delenv(gpu.FAISS_DEVICE_ENV, raising=False)
    assert gpu.search_device() == ("cpu", f"FAISS {faiss.__version__} has GPU support but sees no GPU")
    index = FeatureIndex.build(_data()[0], kind="flat")
    with pytest.warns(UserWarning, match="no GPU support or sees no GPU; using the CPU"):
        index.to("cuda")
    assert index.device == "cpu"


def test_gpu_faiss_searches_on_the_gpu(fake_gpu_faiss, tmp_path):
    base, q = _data()
    assert gpu.search_device() == ("cuda", f"FAISS {faiss.__version__} sees 1 GPU(s)")
    idx, dist = exact_search(base, q, k=3)
    assert "knn_gpu" in fake_gpu_faiss
    fake_gpu_faiss.clear()
    index = FeatureIndex.build(base, kind="flat")
    index.save(tmp_path / "i.faiss")
    loaded = FeatureIndex.load(tmp_path / "i.faiss")  # 'auto'
    assert loaded.device == "cuda" and fake_gpu_faiss == ["index_cpu_to_gpu"]
    assert FeatureIndex.load(tmp_path / "i.faiss", device="cpu").device == "cpu"
    np.testing.assert_array_equal(loaded.search(q, k=3)[0], idx)


def test_env_variable_forces_the_cpu_and_same_results(fake_gpu_faiss, monkeypatch):
    base, q = _data()
    on_gpu = exact_search(base, q, k=5)
    monkeypatch.setenv(gpu.FAISS_DEVICE_ENV, "cpu")
    fake_gpu_faiss.clear()
    assert gpu.search_device() == ("cpu", "the CPU was asked for")
    on_cpu = exact_search(base, q, k=5)
    assert fake_gpu_faiss == []
    np.testing.assert_array_equal(on_gpu[0], on_cpu[0])
    np.testing.assert_allclose(on_gpu[1], on_cpu[1])
    monkeypatch.setenv(gpu.FAISS_DEVICE_ENV, "tpu")
    with pytest.raises(InputError, match=r"one of auto, cpu, cuda \(\$FALCO_FAISS_DEVICE\), got 'tpu'"):
        gpu.search_device()


def test_falco_env_reports_faiss_and_insightface(no_gpu_faiss):
    from typer.testing import CliRunner

    from falco.cli import app

    res = CliRunner().invoke(app, ["env"])
    assert res.exit_code == 0, res.output
    assert f"faiss search     cpu (FAISS {faiss.__version__} has no GPU support" in res.output
    assert "insightface " in res.output and "onnxruntime providers" in res.output
