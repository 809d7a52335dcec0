"""Read checkpoints safely and match their tensors against a network.

Nothing here executes code from a checkpoint: ``.pt``/``.pth`` files go through
``torch.load(weights_only=True)`` and ``.safetensors`` files through safetensors. A file that
pickles Python objects (an ``argparse.Namespace`` in ``opts``, a whole ``nn.Module``...) is
refused with a message that names the class and says how to convert the file; there is no
fallback to ``weights_only=False``. A loader may name globals it accepts as inert stand-ins
(:class:`InertObject`: the class's dotted name, arguments and state, nothing imported or run),
e.g. the objects PyTorch Lightning pickles beside the weights.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch

from falco.errors import CheckpointError

Source = str | os.PathLike | Mapping[str, Any]
M = TypeVar("M", bound=torch.nn.Module)

_GLOBAL_RE = re.compile(r"Unsupported global: GLOBAL\s+([A-Za-z_][\w.]*)")
_WEIGHTS_DETAIL_RE = re.compile(r"WeightsUnpickler error:\s*\n*\s*([^\n]+)")

CONVERT_HINT = (
    "convert it once, in a trusted environment, to tensors and plain containers: "
    "ckpt = torch.load(path, weights_only=False); replace the object (for e4e/pSp: "
    "ckpt['opts'] = vars(ckpt['opts'])) or keep only the state dict; torch.save(ckpt, new_path)"
)


def source_name(source: Any) -> str:
    """How a checkpoint source is named in error messages (its path, or ``<state dict>``)."""
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    return "<state dict>"


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


class InertObject:
    """A pickled object kept as plain data: its class's dotted name (``qualname``), the
    arguments it was built with (``args``) and its pickled state (``state``). Subclasses are
    made per class name by :func:`_stand_in`; nothing of the original class is imported or run."""

    qualname = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> InertObject:
        obj = object.__new__(cls)
        obj.args, obj.state = args, None
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"InertObject({self.qualname})"


class _PlainDict:
    """Stands for a ``dict`` subclass (Lightning's ``AttributeDict``): unpickles as a plain ``dict``."""

    def __new__(cls, *args: Any, **kwargs: Any) -> dict:  # type: ignore[misc]
        return dict(*args)


def _stand_in(name: str) -> type:
    if name.rsplit(".", 1)[-1].endswith("AttributeDict"):
        return type("PlainDict", (_PlainDict,), {})
    return type("Inert", (InertObject,), {"qualname": name})


def _accepted(name: str, patterns: Sequence[str]) -> bool:
    """``name`` equals one of ``patterns`` or starts with one that ends in a dot."""
    return any(name == p or (p.endswith(".") and name.startswith(p)) for p in patterns)


def _load_with_stand_ins(path: Path, patterns: Sequence[str]) -> tuple[Any, str | None]:
    """Retry a weights-only load with the file's non-tensor globals as inert stand-ins.

    Returns:
        ``(checkpoint, None)``, or ``(None, name)`` with a global that ``patterns`` do not accept.
    """
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:  # noqa: BLE001 - a legacy (non-zip) file: no static list, no retry
        return None, None
    foreign = [n for n in names if not _accepted(n, patterns)]
    if foreign or not names:
        return None, (foreign[0] if foreign else None)
    with torch.serialization.safe_globals([(_stand_in(n), n) for n in names]):
        return torch.load(path, map_location="cpu", weights_only=True), None


def load_checkpoint(source: Source, *, inert_globals: Sequence[str] = ()) -> Any:
    """Load a checkpoint file without executing code, or pass an in-memory one through.

    Args:
        source: A path to a ``.pt``/``.pth``/``.ckpt`` (torch zip or legacy pickle, read with
            ``weights_only=True``) or ``.safetensors`` file; or an already loaded mapping,
            returned unchanged.
        inert_globals: Globals the file may pickle besides tensors, read as :class:`InertObject`
            stand-ins (a ``dict`` for an ``...AttributeDict``): full dotted names, or prefixes
            ending in ``.`` (``'pytorch_lightning.'``). Any other global is refused as always.

    Returns:
        The loaded object (usually a dict of tensors and plain containers), on the CPU.

    Raises:
        CheckpointError: the file is missing, unreadable, truncated, or holds pickled Python
            objects that ``weights_only`` loading refuses (the message names the class).
    """
    if isinstance(source, Mapping):
        return source
    if not isinstance(source, (str, os.PathLike)):
        raise CheckpointError(repr(source)[:80], f"expected a path or a state dict, got {type(source).__name__}")
    path = Path(source)
    if not path.exists():
        raise CheckpointError(path, "file not found")
    if not path.is_file():
        raise CheckpointError(path, "not a regular file")
    if path.stat().st_size == 0:
        raise CheckpointError(path, "file is empty")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as exc:  # pragma: no cover - safetensors is a dependency
            raise CheckpointError(path, "reading .safetensors needs the 'safetensors' package") from exc
        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:  # noqa: BLE001 - any safetensors failure is a bad file
            raise CheckpointError(path, f"not a readable safetensors file ({_describe(exc)})") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        msg = str(exc)
        found = _GLOBAL_RE.search(msg)
        if found or "Unsupported global" in msg:
            what = found.group(1) if found else "an unsupported type"
            if inert_globals:
                try:
                    ckpt, foreign = _load_with_stand_ins(path, inert_globals)
                except (pickle.UnpicklingError, RuntimeError, ValueError, TypeError, AttributeError) as again:
                    raise CheckpointError(path, f"not loadable even with inert stand-ins for its "
                                                f"{', '.join(inert_globals)} objects ({_describe(again)})") from None
                if foreign is None and ckpt is not None:
                    return ckpt
                what = foreign or what
            raise CheckpointError(
                path,
                f"checkpoint holds pickled Python objects ({what}) that falco will not execute "
                f"(its weights-only loader, torch.load(weights_only=True), refuses them); {CONVERT_HINT}",
            ) from None
        detail = _WEIGHTS_DETAIL_RE.search(msg)
        reason = detail.group(1).strip() if detail else _describe(exc)
        raise CheckpointError(
            path, f"not loadable with the weights-only loader, torch.load(weights_only=True) ({reason}); "
            f"is it a torch.save file? A plain pickle must be re-saved with torch.save",
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, AttributeError, KeyError,
            TypeError, IndexError, UnicodeDecodeError, MemoryError) as exc:
        raise CheckpointError(
            path, f"not a readable torch checkpoint, truncated or corrupt ({_describe(exc)})"
        ) from None


def unwrap_state_dict(ckpt: Any, source: Any, *, keys: tuple[str, ...] = ("state_dict",)) -> Mapping[str, Any]:
    """Return ``ckpt[k]`` for the first ``k`` in ``keys`` present, else ``ckpt`` itself.

    Raises:
        CheckpointError: the checkpoint is not a mapping.
    """
    if not isinstance(ckpt, Mapping):
        raise CheckpointError(source_name(source), f"expected a dict-like checkpoint, got {type(ckpt).__name__}")
    for key in keys:
        inner = ckpt.get(key)
        if isinstance(inner, Mapping):
            return inner
    return ckpt


def strip_prefix(state: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """Keep the entries whose key starts with ``prefix`` and remove it from their keys.

    An empty ``prefix`` returns a plain copy.
    """
    if not prefix:
        return dict(state)
    n = len(prefix)
    return {k[n:]: v for k, v in state.items() if isinstance(k, str) and k.startswith(prefix)}


def strip_wrapper_prefixes(state: Mapping[str, Any], prefixes: Sequence[str]) -> dict[str, Any]:
    """Remove, in order, each of ``prefixes`` that every key carries (DataParallel's ``module.``...)."""
    state = dict(state)
    for prefix in prefixes:
        if state and all(isinstance(k, str) and k.startswith(prefix) for k in state):
            state = strip_prefix(state, prefix)
    return state


def check_state_dict(
    expected: Mapping[str, torch.Tensor],
    state: Mapping[str, Any],
    source: Any,
    *,
    what: str = "network",
    prefix: str = "",
    ignore_unexpected: bool = False,
) -> None:
    """Check that ``state`` has exactly the keys and shapes of ``expected``.

    Args:
        expected: The network's own ``state_dict()``.
        state: The checkpoint's (prefix-stripped) tensors.
        source: Path or object named in the error.
        what: Name of the network in the message (``'e4e encoder'``).
        prefix: Prefix to print in front of key names (as stored in the file).
        ignore_unexpected: Accept extra keys in ``state``.

    Raises:
        CheckpointError: missing or unexpected keys (the first few are listed), a value that is
            not a tensor, or a shape mismatch (key, expected and got shapes).
    """
    name = source_name(source)
    missing = [k for k in expected if k not in state]
    unexpected = [] if ignore_unexpected else [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys (e.g. {[prefix + k for k in missing[:4]]})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys (e.g. {[prefix + k for k in unexpected[:4]]})")
        raise CheckpointError(name, f"{what} keys do not match: " + "; ".join(parts))
    for key, ref in expected.items():
        got = state[key]
        if not isinstance(got, torch.Tensor):
            raise CheckpointError(name, f"{prefix}{key}: expected a tensor, got {type(got).__name__}")
        if tuple(got.shape) != tuple(ref.shape):
            raise CheckpointError(
                name, f"{what} tensor {prefix}{key!s} has shape {list(got.shape)}, expected {list(ref.shape)}"
            )


def build_empty(factory: Callable[[], M]) -> M:
    """Build a network on the ``meta`` device (no memory, no random init) for :func:`load_checked`."""
    with torch.device("meta"):
        return factory()


def load_checked(
    module: M,
    state: Mapping[str, Any],
    source: Any,
    *,
    what: str = "network",
    prefix: str = "",
) -> M:
    """``check_state_dict`` then ``load_state_dict(strict=True)``; floats are cast to the module's dtype.

    A module built with :func:`build_empty` takes the checkpoint's tensors without copying
    (``assign=True``; it may then share storage with ``state``), and any non-persistent buffer
    still on ``meta`` afterwards is materialised as zeros on the CPU.

    Returns:
        ``module``, holding the checkpoint's tensors.
    """
    expected = module.state_dict()
    check_state_dict(expected, state, source, what=what, prefix=prefix)
    cast = {}
    for key, ref in expected.items():
        t = state[key]
        cast[key] = t.to(ref.dtype) if t.is_floating_point() and ref.is_floating_point() else t
    on_meta = any(t.is_meta for t in expected.values())
    module.load_state_dict(cast, strict=True, assign=on_meta)
    if on_meta:
        for sub in module.modules():
            for name, buf in list(sub.named_buffers(recurse=False)):
                if buf is not None and buf.is_meta:
                    sub._buffers[name] = torch.zeros(buf.shape, dtype=buf.dtype)
    return module


def tensor(state: Mapping[str, Any], key: str, source: Any, *, ndim: int | None = None, prefix: str = "") -> torch.Tensor:
    """``state[key]`` as a tensor, or CheckpointError naming the key (used for shape inference)."""
    value = state.get(key)
    if not isinstance(value, torch.Tensor):
        raise CheckpointError(source_name(source), f"missing tensor {prefix}{key}")
    if ndim is not None and value.ndim != ndim:
        raise CheckpointError(
            source_name(source), f"tensor {prefix}{key} has shape {list(value.shape)}, expected {ndim} dimensions"
        )
    return value
