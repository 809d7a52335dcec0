"""Lazy ninja build of the CUDA extensions, keyed by a hash of their sources.

Nothing here runs at import. :func:`build_extension` compiles (or loads a cached build of)
one extension with :func:`torch.utils.cpp_extension.load` into
``$TORCH_EXTENSIONS_DIR/<name>-<hash>`` or, by default, ``$FALCO_HOME/torch_extensions/<name>-<hash>``
(``FALCO_HOME`` defaults to ``~/.cache/falco``). The hash covers the sources, the compiler flags,
the target architectures and the torch/CUDA/Python versions, so a stale build is never reused.

It also copes with a CUDA toolkit that is only partly installed: when ``$CUDA_HOME`` lacks the
runtime headers or ``libcudart.so``, those shipped in torch's ``nvidia`` wheels are used instead.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
import logging
import os
import shutil
import sys
import threading
import time
from pathlib import Path
from types import ModuleType

import torch

from .errors import BuildError

__all__ = [
    "EXTENSIONS", "BuildError", "Toolchain", "build_dir", "build_extension", "build_root", "failure", "find_toolchain",
    "loaded",
]

logger = logging.getLogger(__name__)

SOURCE_DIR = Path(__file__).resolve().parent
EXTENSIONS: dict[str, tuple[str, ...]] = {
    "bias_act": ("bias_act.cpp", "bias_act.cu", "bias_act.h"),
    "upfirdn2d": ("upfirdn2d.cpp", "upfirdn2d.cu", "upfirdn2d.h"),
}
# Build-only default when no GPU is visible and TORCH_CUDA_ARCH_LIST is unset (A100, H100).
DEFAULT_ARCHS = ("8.0", "9.0")
CFLAGS = ("-O3",)
CUDA_CFLAGS = ("-O3", "--use_fast_math")

_lock = threading.Lock()
_loaded: dict[str, ModuleType] = {}
_failed: dict[str, str] = {}


@dataclasses.dataclass(frozen=True)
class Toolchain:
    """What a build will use; ``None`` fields are missing."""

    nvcc: str | None
    ninja: str | None
    cuda_home: str | None
    include_dirs: tuple[str, ...]  # extra include dirs (CUDA headers outside $CUDA_HOME)
    cudart_dir: str | None  # a folder holding libcudart.so.* when $CUDA_HOME/lib64 lacks libcudart.so

    def problem(self) -> str | None:
        """Why a build cannot even start, or None."""
        if self.nvcc is None:
            return "nvcc not found (put the CUDA toolkit's bin on PATH or set CUDA_HOME)"
        if self.ninja is None:
            return "ninja not found (pip install ninja)"
        if self.cuda_home is None:
            return "no CUDA toolkit directory found (set CUDA_HOME)"
        return None


def _nvidia_wheel_dirs() -> list[Path]:
    """Folders of torch's ``nvidia`` CUDA wheels (``nvidia/cu13``, ``nvidia/cuda_runtime``, ...)."""
    spec = importlib.util.find_spec("nvidia")
    if spec is None or not spec.submodule_search_locations:
        return []
    dirs = []
    for root in spec.submodule_search_locations:
        root_path = Path(root)
        if root_path.is_dir():
            dirs.extend(sorted(p for p in root_path.iterdir() if p.is_dir()))
    return dirs


def _find_cuda_home(nvcc: str | None) -> str | None:
    """$CUDA_HOME/$CUDA_PATH, else a toolkit dir holding nvcc (preferring one with headers)."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            return os.environ[var]
    candidates = []
    if nvcc is not None:
        candidates += [Path(nvcc).parent.parent, Path(os.path.realpath(nvcc)).parent.parent]
    candidates.append(Path("/usr/local/cuda"))
    for home in candidates:
        if (home / "bin" / "nvcc").exists() and (home / "include" / "cuda_runtime.h").exists():
            return str(home)
    for home in candidates:
        if (home / "bin" / "nvcc").exists():
            return str(home)
    return None


@functools.lru_cache(maxsize=1)
def find_toolchain() -> Toolchain:
    """Locate nvcc, ninja, the CUDA home and any headers/libcudart it lacks (cached)."""
    nvcc = None
    if os.environ.get("CUDA_HOME") and (Path(os.environ["CUDA_HOME"]) / "bin" / "nvcc").exists():
        nvcc = str(Path(os.environ["CUDA_HOME"]) / "bin" / "nvcc")
    nvcc = nvcc or shutil.which("nvcc")
    ninja = shutil.which("ninja")
    if ninja is None:  # the PyPI wheel puts it next to the interpreter
        candidate = Path(sys.executable).parent / "ninja"
        ninja = str(candidate) if candidate.exists() else None
    cuda_home = _find_cuda_home(nvcc)

    include_dirs: list[str] = []
    cudart_dir = None
    if cuda_home is not None:
        home = Path(cuda_home)
        if not (home / "include" / "cuda_runtime.h").exists():
            include_dirs += [str(d / "include") for d in _nvidia_wheel_dirs() if (d / "include" / "cuda_runtime.h").exists()][:1]
        if not any((home / lib / "libcudart.so").exists() for lib in ("lib64", "lib")):
            for d in _nvidia_wheel_dirs():
                if any((d / "lib").glob("libcudart.so*")):
                    cudart_dir = str(d / "lib")
                    break
    return Toolchain(nvcc=nvcc, ninja=ninja, cuda_home=cuda_home, include_dirs=tuple(include_dirs), cudart_dir=cudart_dir)


def _arch_flags() -> tuple[str, list[str]]:
    """(a key naming the target GPUs, explicit -gencode flags or [] to let torch choose)."""
    env = os.environ.get("TORCH_CUDA_ARCH_LIST")
    if env:
        return f"env:{env}", []
    if torch.cuda.is_available():
        caps = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
        return "devices:" + ",".join(f"{a}.{b}" for a, b in caps), []
    flags = []
    for arch in DEFAULT_ARCHS:
        num = arch.replace(".", "")
        flags.append(f"-gencode=arch=compute_{num},code=sm_{num}")
    return "default:" + ";".join(DEFAULT_ARCHS), flags


def build_root() -> Path:
    """Where builds go: ``$TORCH_EXTENSIONS_DIR`` or ``$FALCO_HOME/torch_extensions``."""
    if os.environ.get("TORCH_EXTENSIONS_DIR"):
        return Path(os.environ["TORCH_EXTENSIONS_DIR"])
    falco_home = os.environ.get("FALCO_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "falco")
    return Path(falco_home) / "torch_extensions"


def _key(name: str, arch_key: str) -> str:
    h = hashlib.sha256()
    for fname in EXTENSIONS[name]:
        h.update(fname.encode() + b"\0" + (SOURCE_DIR / fname).read_bytes() + b"\0")
    meta = [torch.__version__, str(torch.version.cuda), sys.version, arch_key, *CFLAGS, *CUDA_CFLAGS]
    h.update("\0".join(meta).encode())
    return h.hexdigest()[:16]


def build_dir(name: str) -> tuple[Path, str]:
    """(build folder, module name) of extension ``name`` for this environment. Compiles nothing.

    Note: with a visible GPU this reads its compute capability (initialises CUDA).
    """
    if name not in EXTENSIONS:
        raise KeyError(f"unknown extension {name!r}; expected one of {sorted(EXTENSIONS)}")
    arch_key, _ = _arch_flags()
    key = _key(name, arch_key)
    return build_root() / f"{name}-{key}", f"falco_{name}_{key}"


def loaded(name: str) -> ModuleType | None:
    """The extension module if this process already built/loaded it, else None."""
    return _loaded.get(name)


def failure(name: str) -> str | None:
    """Why building ``name`` failed in this process, or None."""
    return _failed.get(name)


def _cudart_link_dir(cudart_dir: str, folder: Path) -> Path:
    """A folder with a ``libcudart.so`` symlink to the wheel's ``libcudart.so.<major>``."""
    link_dir = folder / "cudart"
    link_dir.mkdir(parents=True, exist_ok=True)
    link = link_dir / "libcudart.so"
    if not link.exists():
        targets = sorted(Path(cudart_dir).glob("libcudart.so.*"), key=lambda p: len(p.name))
        if not targets:
            raise BuildError(f"no libcudart.so.* in {cudart_dir}")
        tmp = link_dir / f".libcudart.so.{os.getpid()}"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(targets[0])
        os.replace(tmp, link)  # atomic: concurrent builders agree
    return link_dir


def _short_reason(exc: BaseException) -> str:
    """The compiler's first error lines (not the whole log) or the exception's first line."""
    text = str(exc).strip() or type(exc).__name__
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if "error:" in line.lower() or "cannot find" in line.lower()]
    picked = errors[:2] if errors else lines[:1]
    return " | ".join(line[:300] for line in picked)


def build_extension(name: str, *, verbose: bool = False) -> ModuleType:
    """Build (or load the cached build of) extension ``name`` and return the module.

    Works without a GPU (compiles for :data:`DEFAULT_ARCHS` unless ``TORCH_CUDA_ARCH_LIST`` is set).
    A failure is remembered for the rest of the process and raised again without rebuilding.

    Args:
        name: ``'bias_act'`` or ``'upfirdn2d'``.
        verbose: Echo the compiler commands and output.

    Raises:
        BuildError: nvcc/ninja missing, or compilation/loading failed.
    """
    if name not in EXTENSIONS:
        raise KeyError(f"unknown extension {name!r}; expected one of {sorted(EXTENSIONS)}")
    with _lock:
        if name in _loaded:
            return _loaded[name]
        if name in _failed:
            raise BuildError(f"building the {name} CUDA extension failed earlier in this process: {_failed[name]}")
        try:
            module = _build(name, verbose=verbose)
        except BuildError as exc:
            _failed[name] = str(exc)
            raise
        except Exception as exc:  # compiler errors come as RuntimeError, loader errors as ImportError/OSError
            _failed[name] = _short_reason(exc)
            raise BuildError(f"building the {name} CUDA extension failed: {_failed[name]}") from exc
        _loaded[name] = module
        return module


def _build(name: str, *, verbose: bool) -> ModuleType:
    tools = find_toolchain()
    problem = tools.problem()
    if problem is not None:
        raise BuildError(problem)
    assert tools.cuda_home is not None
    os.environ.setdefault("CUDA_HOME", tools.cuda_home)  # read when cpp_extension is imported
    from torch.utils import cpp_extension

    if not cpp_extension.CUDA_HOME:  # imported before CUDA_HOME was known
        cpp_extension.CUDA_HOME = tools.cuda_home

    arch_key, arch_flags = _arch_flags()
    folder, module_name = build_dir(name)
    folder.mkdir(parents=True, exist_ok=True)
    ldflags = []
    if tools.cudart_dir is not None:
        ldflags.append(f"-L{_cudart_link_dir(tools.cudart_dir, folder)}")
    sources = [str(SOURCE_DIR / f) for f in EXTENSIONS[name] if not f.endswith(".h")]

    start = time.perf_counter()
    logger.info("stylegan2_ops: building/loading the %s CUDA extension in %s (%s)", name, folder, arch_key)
    module = cpp_extension.load(
        name=module_name,
        sources=sources,
        extra_cflags=list(CFLAGS),
        extra_cuda_cflags=[*CUDA_CFLAGS, *arch_flags],
        extra_ldflags=ldflags,
        extra_include_paths=[str(SOURCE_DIR), *tools.include_dirs],
        build_directory=str(folder),
        with_cuda=True,
        verbose=verbose,
    )
    logger.info("stylegan2_ops: %s ready after %.1f s", name, time.perf_counter() - start)
    return module
