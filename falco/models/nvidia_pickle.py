"""Read NVIDIA's StyleGAN ``.pkl`` network pickles without executing their code.

NVlabs pickles (stylegan2-ada-pytorch, stylegan3) store each network as a *persistent
object*: ``torch_utils.persistence._reconstruct_persistent_obj(meta)`` where ``meta`` holds
the module's Python source (``module_src``), the class name and the object's ``__dict__``.
Unpickling them normally ``exec``s that source. Here a restricted unpickler maps the
reconstruct function to :class:`PersistentObject` (plain data: class name + state), rebuilds
tensors through torch's own safe loader, and turns any other class into an inert
:class:`OpaqueObject`. Nothing from the file is ever imported or executed.
"""

from __future__ import annotations

import collections
import io
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from falco.errors import CheckpointError


@dataclass
class PersistentObject:
    """A persistent NVlabs object as plain data: its class name and ``__dict__``."""

    class_name: str
    state: dict
    module_src_len: int = 0


class OpaqueObject:
    """Any other pickled object, kept inert: its dotted class name, args, state and items.

    Subclasses are made per class name by :func:`_opaque_class`, so that every pickle
    opcode (REDUCE, NEWOBJ, BUILD, SETITEMS, APPENDS) works on them without running code.
    """

    qualname = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> "OpaqueObject":
        obj = object.__new__(cls)
        obj.args, obj.state, obj.items, obj.list = args, None, {}, []
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items[key] = value

    def append(self, value: Any) -> None:
        self.list.append(value)

    def extend(self, values: Any) -> None:
        self.list.extend(values)

    def __repr__(self) -> str:
        return f"OpaqueObject({self.qualname})"


def _opaque_class(qualname: str) -> type[OpaqueObject]:
    return type("Opaque", (OpaqueObject,), {"qualname": qualname})


def _reconstruct_persistent(meta: dict) -> PersistentObject:
    if not isinstance(meta, dict) or "state" not in meta or "class_name" not in meta:
        raise pickle.UnpicklingError("malformed persistent-object record")
    state = meta["state"]
    state = _as_dict(state)
    return PersistentObject(str(meta["class_name"]), dict(state or {}), len(meta.get("module_src") or ""))


def _load_storage_from_bytes(data: bytes) -> Any:
    """Replacement for ``torch.storage._load_from_bytes``: torch's weights-only loader."""
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


class EasyDict(dict):
    """Stand-in for ``dnnlib.util.EasyDict``: a plain dict (NEWOBJ needs a real class)."""


def _reconstructor(cls: Any, base: Any, state: Any = None) -> Any:
    """``copyreg._reconstructor`` for the classes we allow: build inert objects only."""
    if isinstance(cls, type) and issubclass(cls, OpaqueObject):
        return cls.__new__(cls)
    if cls in (dict, collections.OrderedDict):
        return cls()
    raise pickle.UnpicklingError(f"refusing to reconstruct {cls!r}")


_ALLOWED: dict[tuple[str, str], Any] = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent,
    ("torch.storage", "_load_from_bytes"): _load_storage_from_bytes,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): torch._utils._rebuild_parameter_with_state,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "dict"): dict,
    ("builtins", "list"): list,
    ("builtins", "tuple"): tuple,
    ("dnnlib.util", "EasyDict"): EasyDict,
    ("dnnlib", "EasyDict"): EasyDict,
    ("copyreg", "_reconstructor"): _reconstructor,
    ("builtins", "object"): object,
    ("torch", "Size"): torch.Size,
    ("torch", "device"): torch.device,
}


class _SafeUnpickler(pickle.Unpickler):
    """Resolves only whitelisted globals; everything else becomes an inert placeholder."""

    def find_class(self, module: str, name: str) -> Any:
        key = (module, name)
        if key in _ALLOWED:
            return _ALLOWED[key]
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if module == "torch" and name.endswith("Storage") and hasattr(torch, name):
            return getattr(torch, name)
        return _opaque_class(f"{module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("unexpected persistent id in a plain pickle")


def load_nvidia_pickle(path: str | Path) -> dict:
    """Unpickle an NVlabs network pickle into plain data, executing nothing.

    Returns:
        The top-level dict (e.g. keys ``G``, ``D``, ``G_ema``), networks as
        :class:`PersistentObject`.

    Raises:
        CheckpointError: unreadable, truncated or not a network pickle.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = _SafeUnpickler(f).load()
    except FileNotFoundError:
        raise CheckpointError(path, "file not found") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, RuntimeError) as exc:
        raise CheckpointError(path, f"not a readable network pickle ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError(path, f"expected a dict of networks at the top level, got {type(data).__name__}")
    return data


def module_state_dict(obj: PersistentObject | OpaqueObject) -> dict[str, torch.Tensor]:
    """Flatten a pickled ``nn.Module`` (its ``_parameters``, ``_buffers``, ``_modules``) to a state dict.

    Non-persistent buffers are skipped, as ``nn.Module.state_dict`` would.
    """
    out: dict[str, torch.Tensor] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, PersistentObject):
            state = node.state
        elif isinstance(node, OpaqueObject) and isinstance(node.state, dict):
            state = node.state
        else:
            return
        skip = set(state.get("_non_persistent_buffers_set") or ())
        for name, tensor in (state.get("_parameters") or {}).items():
            if tensor is not None:
                out[prefix + name] = torch.Tensor(tensor.detach()) if isinstance(tensor, torch.nn.Parameter) else tensor
        for name, tensor in (state.get("_buffers") or {}).items():
            if tensor is not None and name not in skip:
                out[prefix + name] = tensor
        for name, child in (state.get("_modules") or {}).items():
            if child is not None:
                walk(child, f"{prefix}{name}.")

    walk(obj, "")
    return out


def init_kwargs(obj: PersistentObject) -> dict:
    """The constructor kwargs NVlabs records on each persistent network (``_init_kwargs``)."""
    return _as_dict(obj.state.get("_init_kwargs"))


def _as_dict(value: Any) -> dict:
    """A dict, or a dict-like opaque object (e.g. an unknown dict subclass), as a plain dict."""
    if isinstance(value, OpaqueObject):
        state = value.state if isinstance(value.state, dict) else {}
        return {**state, **value.items}
    return dict(value or {})
