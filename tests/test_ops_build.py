"""stylegan2_ops build machinery: nothing compiles at import, the extensions compile and import
here when nvcc and ninja exist (no GPU needed), the build folder is keyed by the sources, a
partial CUDA toolkit is completed from torch's nvidia wheels, and failures are reported once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import stylegan2_ops as so
from stylegan2_ops import _build

REPO = Path(__file__).resolve().parents[1]


def test_import_and_impl_status_do_not_build(tmp_path):
    code = (
        "import json, sys\n"
        "import stylegan2_ops\n"
        "from stylegan2_ops import _build\n"
        "status = stylegan2_ops.impl_status()\n"
        "print(json.dumps({'cpp_extension': 'torch.utils.cpp_extension' in sys.modules,\n"
        "                  'ext_modules': [m for m in sys.modules if m.startswith('falco_')],\n"
        "                  'loaded': list(_build._loaded), 'status': status}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("TORCH_EXTENSIONS_DIR", "FALCO_OPS")}
    env["FALCO_HOME"] = str(tmp_path / "home")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["cpp_extension"] is False
    assert report["ext_modules"] == [] and report["loaded"] == []
    assert not (tmp_path / "home").exists()  # not even a build folder
    status = report["status"]
    assert status["requested"] == "auto"
    assert {"cuda_available", "nvcc", "ninja", "bias_act", "upfirdn2d"} <= set(status)
    if not status["cuda_available"]:
        assert status["bias_act"] == status["upfirdn2d"] == "ref (no CUDA device)"


@pytest.fixture(scope="module")
def toolchain():
    problem = _build.find_toolchain().problem()
    if problem is not None:
        pytest.skip(f"needs nvcc and ninja: {problem}")
    return _build.find_toolchain()


@pytest.mark.slow  # a cold build takes about a minute per extension on 2 CPU cores
@pytest.mark.parametrize("name, func", [("bias_act", "bias_act"), ("upfirdn2d", "upfirdn2d")])
def test_extension_compiles_and_imports(toolchain, name, func, record_property):
    start = time.perf_counter()
    module = so.build_extension(name)
    seconds = time.perf_counter() - start
    record_property(f"{name}_build_seconds", round(seconds, 1))
    print(f"{name}: build/load took {seconds:.1f} s")
    folder, module_name = _build.build_dir(name)
    assert module.__name__ == module_name
    assert Path(module.__file__).parent == folder and module_name in Path(module.__file__).name
    assert callable(getattr(module, func))
    assert so.build_extension(name) is module  # built once per process


@pytest.mark.slow  # builds both extensions when they are not built yet
def test_host_path_of_built_kernels_runs(toolchain):
    """Smallest end-to-end check of each compiled module (parity is in test_ops_bias_act/upfirdn2d)."""
    ba = so.build_extension("bias_act")
    x = torch.tensor([-2.0, -0.5, 0.5, 2.0])
    empty = torch.empty(0)
    y = ba.bias_act(x, empty, empty, empty, empty, 0, 0, 3, 0.2, 2.0**0.5, 1.0)  # lrelu, clamp 1
    torch.testing.assert_close(y, so.bias_act(x, act="lrelu", clamp=1.0, impl="ref"))
    up = so.build_extension("upfirdn2d")
    img = torch.arange(6.0).reshape(1, 1, 2, 3)
    out = up.upfirdn2d(img, torch.ones(1, 1), 2, 2, 1, 1, 0, 0, 0, 0, False, 1.0)
    want = torch.zeros(1, 1, 4, 6)  # a zero after each pixel
    want[:, :, ::2, ::2] = img
    torch.testing.assert_close(out, want)


# --------------------------------------------------------------------------------------------
# Build folder, toolchain discovery and failure handling (no compiler needed).


def test_build_dir_is_keyed_by_sources_and_honours_env(monkeypatch, tmp_path):
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    monkeypatch.setenv("FALCO_HOME", str(tmp_path))
    folder, module_name = _build.build_dir("bias_act")
    assert folder.parent == tmp_path / "torch_extensions"
    key = folder.name.split("-", 1)[1]
    assert len(key) == 16 and module_name == f"falco_bias_act_{key}"
    assert _build.build_dir("upfirdn2d")[0].name != folder.name
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))
    assert _build.build_dir("bias_act")[0] == tmp_path / "ext" / folder.name
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "7.5")
    assert _build.build_dir("bias_act")[0].name != folder.name  # other targets, other build
    monkeypatch.setattr(_build, "SOURCE_DIR", tmp_path / "src")
    (tmp_path / "src").mkdir()
    for fname in _build.EXTENSIONS["bias_act"]:
        (tmp_path / "src" / fname).write_text(fname)
    assert _build.build_dir("bias_act")[0].name != folder.name  # other sources, other build
    with pytest.raises(KeyError):
        _build.build_dir("conv2d")


def test_partial_toolkit_is_completed_from_nvidia_wheels(monkeypatch, tmp_path):
    wheels = [d for d in _build._nvidia_wheel_dirs() if (d / "include" / "cuda_runtime.h").exists()]
    if not wheels or not any((wheels[0] / "lib").glob("libcudart.so.*")):
        pytest.skip("torch's nvidia CUDA runtime wheel is not installed")
    home = tmp_path / "cuda"
    (home / "bin").mkdir(parents=True)
    (home / "bin" / "nvcc").write_text("#!/bin/sh\n")
    monkeypatch.setenv("CUDA_HOME", str(home))
    _build.find_toolchain.cache_clear()
    try:
        tools = _build.find_toolchain()
    finally:
        _build.find_toolchain.cache_clear()
    assert tools.cuda_home == str(home) and tools.nvcc == str(home / "bin" / "nvcc")
    assert tools.include_dirs == (str(wheels[0] / "include"),)
    assert tools.cudart_dir is not None
    link_dir = _build._cudart_link_dir(tools.cudart_dir, tmp_path / "build")
    link = link_dir / "libcudart.so"
    assert link.is_symlink() and link.resolve().name.startswith("libcudart.so.")


@pytest.fixture
def fresh_state(monkeypatch):
    monkeypatch.setattr(_build, "_loaded", {})
    monkeypatch.setattr(_build, "_failed", {})
    monkeypatch.delenv("FALCO_OPS", raising=False)


def test_failure_is_remembered_and_reported(monkeypatch, fresh_state):
    calls = []

    def broken(name, *, verbose):
        calls.append(name)
        raise RuntimeError("Error building extension 'x': [1/3] c++ ...\nbias_act.cu(12): error: identifier \"y\" is undefined")

    monkeypatch.setattr(_build, "_build", broken)
    for _ in range(2):
        with pytest.raises(_build.BuildError, match='identifier "y" is undefined'):
            so.build_extension("bias_act")
    assert calls == ["bias_act"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    status = so.impl_status()
    assert status["bias_act"].startswith("ref (CUDA build failed:") and "undefined" in status["bias_act"]
    monkeypatch.setenv("FALCO_OPS", "cuda")
    assert so.impl_status()["bias_act"].startswith("error (CUDA build failed:")


def test_missing_nvcc_is_a_build_error(monkeypatch, fresh_state):
    tools = _build.Toolchain(nvcc=None, ninja="/usr/bin/ninja", cuda_home=None, include_dirs=(), cudart_dir=None)
    monkeypatch.setattr(_build, "find_toolchain", lambda: tools)
    with pytest.raises(_build.BuildError, match="nvcc not found"):
        so.build_extension("upfirdn2d")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert "nvcc not found" in so.impl_status()["upfirdn2d"]


def test_status_before_first_build(monkeypatch, fresh_state, tmp_path):
    monkeypatch.setenv("FALCO_HOME", str(tmp_path))
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    tools = _build.Toolchain(nvcc="/x/nvcc", ninja="/x/ninja", cuda_home="/x", include_dirs=(), cudart_dir=None)
    monkeypatch.setattr(_build, "find_toolchain", lambda: tools)
    assert so.impl_status()["upfirdn2d"] == "cuda (not built yet: builds on first CUDA call)"
    folder, module_name = _build.build_dir("upfirdn2d")
    folder.mkdir(parents=True)
    (folder / f"{module_name}.so").write_bytes(b"")
    assert so.impl_status()["upfirdn2d"].startswith("cuda (cached build")
