"""Read what the reference FALCO (chi0tzp/FALCO, CVPR 2023) wrote: its fakes, pairs and inversions.

The reference scripts run from the repository root and write, relative to it::

    datasets/fake/fake_dataset_<gan>-<truncation>-<num_samples>[-CLIP][-FaRL][-DINO][-ArcFace]/
        args.json                   create_fake_dataset.py's arguments (gan, truncation, num_samples, no_*, cuda)
        latent_code_hashes.txt      one sha1(z) hex digest a line, in sampling order (written after the
                                    last fake: a crashed run has none)
        <hash>/latent_code_w+.pt    torch.save(wp.cpu()): [1, num_ws, w_dim] float32, requires_grad=True
                                    (genforce get_w with trunc_layers=18: every layer truncated, all equal)
        <hash>/latent_code_s.pt     the style-space dict, saved from the GPU (not read here)
        <hash>/image.jpg            the fake, min-max rescaled, JPEG (quality 95; 75 in later versions)
        <hash>/<f>_features.pt      [1, dim], f in clip, openclip, farl, dino, dinov2, arcface
        <f>_features.pt             the same, stacked: [N, dim], rows in latent_code_hashes.txt order
        <f>_<algorithm>_<metric>_nn_map_<dataset>.json
                                    pair_nn.py: {real image file name: fake hash} (the README pairs with
                                    farl_auto_cosine_nn_map_<dataset>.json)
    datasets/features/<dataset>/    extract_features.py: image_filenames.txt, <f>_features.pt (reals)
    datasets/inv/<dataset>/         invert.py
        latent_codes/<id>.pt        torch.save(codes[i]) straight from the GPU: a [num_ws, w_dim] view of
                                    the batch's e4e codes (the file holds the whole batch), storage
                                    tagged 'cuda:0', requires_grad=True
        data/<id>_aligned.jpg       the aligned crop that was inverted (<id>_recon.jpg: its rendering)
    models/pretrained/genforce/<gan>.pth   the generator (genforce layout)

``<id>`` is an image's file name up to its first dot (the reference's ``get_img_id``). Every file
is read with ``torch.load(map_location='cpu', weights_only=True)``; codes are copied out of the
batch they were saved with and detached.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from falco.errors import InputError
from falco.run.inputs import read_json_object

__all__ = ["CodeFiles", "FalcoWorkspace", "image_id", "load_code", "read_workspace"]

FAKE_ROOT = Path("datasets") / "fake"
INV_ROOT = Path("datasets") / "inv"
GENERATOR_DIR = Path("models") / "pretrained" / "genforce"
HASHES = "latent_code_hashes.txt"
CODE_FILE = "latent_code_w+.pt"
IMAGE_FILE = "image.jpg"
DEFAULT_FEATURES = "farl"
_DIR_RE = re.compile(r"fake_dataset_(?P<gan>.+?)-(?P<psi>\d+(?:\.\d*)?)-(?P<num>\d+)(?P<feats>(?:-[A-Za-z0-9]+)*)")
_MAP_RE = re.compile(r"(?P<kind>.+)_nn_map_(?P<dataset>.+)\.json")


def image_id(name: str) -> str:
    """A real image's id as the reference names its files: the file name up to its first dot."""
    return Path(name).name.split(".")[0]


def load_code(path: Path, what: str = "a W+ code") -> torch.Tensor:
    """One saved W+ code, as an independent CPU float32 tensor (no grad, no batch storage).

    Accepts ``[num_ws, w_dim]`` or ``[1, num_ws, w_dim]``, saved from any device.

    Raises:
        CheckpointError: unreadable file; InputError: not a finite float tensor of those shapes.
    """
    from falco.models._checkpoint import load_checkpoint

    obj = load_checkpoint(path)
    if not isinstance(obj, torch.Tensor):
        raise InputError(f"{path}: expected {what} tensor, got {type(obj).__name__}")
    t = obj.detach()
    if t.ndim == 3 and t.shape[0] == 1:
        t = t[0]
    if t.ndim != 2 or not t.is_floating_point():
        raise InputError(f"{path}: expected {what} [num_ws, w_dim] or [1, num_ws, w_dim] of floats, "
                         f"got {str(t.dtype).replace('torch.', '')} {list(obj.shape)}")
    t = t.to(torch.float32, copy=True)  # a copy of its own: the saved batch's storage is let go
    if not torch.isfinite(t).all():
        raise InputError(f"{path}: {what} with non-finite values")
    return t


def _sort_key(key: str) -> tuple:
    return (0, int(key), key) if key.isdigit() else (1, 0, key)


class CodeFiles(Mapping):
    """A folder of ``<id>.pt`` W+ codes as a read-only mapping id -> ``[num_ws, w_dim]``, loaded on access.

    Keys are sorted numerically when they are numbers (CelebA-HQ's ``0`` .. ``29999``).
    """

    def __init__(self, folder: Path, what: str = "an inverted W+ code") -> None:
        self.folder = Path(folder)
        self.what = what
        self._keys = sorted((p.name[:-3] for p in self.folder.glob("*.pt") if p.is_file()), key=_sort_key)
        self._set = set(self._keys)

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.pt"

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self._set:
            raise KeyError(key)
        return load_code(self.path(key), self.what)

    def __contains__(self, key: object) -> bool:
        return key in self._set

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"CodeFiles({str(self.folder)!r}, {len(self)} codes)"


@dataclass
class FalcoWorkspace:
    """A reference FALCO repository's outputs (see the module notes); made by :func:`read_workspace`.

    Attributes:
        root: the repository root; ``fake_dir``: the fake dataset folder.
        fake_ids: the fakes' hashes, in ``latent_code_hashes.txt`` order (bank order).
        gan, truncation, num_samples: from ``args.json`` (else the folder's name).
        generator: ``models/pretrained/genforce/<gan>.pth`` (may not exist).
        feature_names: the stacked fake feature files present (``'farl'`` for ``farl_features.pt``...).
        dataset: the real dataset (``'celebahq'``), or None when the workspace has none yet.
        pair_map: the pair map read into ``pairs`` (None: no map).
        pairs: real image file name (``'0.jpg'``) -> fake id, in the map's order.
        inv_dir: ``datasets/inv/<dataset>`` (None: no inversions).
        inverted: real image id (``'0'``) -> W+ code ``[num_ws, w_dim]``, loaded on access.
        args: ``args.json`` as read.

    ``fake_codes`` loads every fake's code once (``[N, num_ws, w_dim]``; a stride-0 expanded
    view of ``[N, w_dim]`` when every fake's layers are equal, as the reference writes them).
    """

    root: Path
    fake_dir: Path
    fake_ids: list[str]
    gan: str
    truncation: float
    num_samples: int
    generator: Path
    feature_names: tuple[str, ...] = ()
    dataset: str | None = None
    pair_map: Path | None = None
    pairs: dict[str, str] = field(default_factory=dict)
    inv_dir: Path | None = None
    inverted: Mapping[str, torch.Tensor] = field(default_factory=dict)
    args: dict = field(default_factory=dict)
    _codes: torch.Tensor | None = field(default=None, init=False, repr=False)
    _w: torch.Tensor | None = field(default=None, init=False, repr=False)
    _index: dict[str, int] | None = field(default=None, init=False, repr=False)

    # -- fakes
    @property
    def fake_index(self) -> dict[str, int]:
        """fake id -> its row (bank index)."""
        if self._index is None:
            self._index = {h: i for i, h in enumerate(self.fake_ids)}
        return self._index

    def code_path(self, fake_id: str) -> Path:
        return self.fake_dir / fake_id / CODE_FILE

    def image_path(self, fake_id: str) -> Path:
        return self.fake_dir / fake_id / IMAGE_FILE

    def fake_code(self, fake_id: str) -> torch.Tensor:
        """One fake's W+ code. Shape: ``[num_ws, w_dim]``."""
        if fake_id not in self.fake_index:
            raise InputError(f"fake {fake_id!r} is not listed in {self.fake_dir / HASHES}")
        if self._codes is not None:
            return self._codes[self.fake_index[fake_id]].clone()
        return load_code(self.code_path(fake_id), "a fake's W+ code")

    @property
    def fake_codes(self) -> torch.Tensor:
        """Every fake's W+ code, in ``fake_ids`` order. Shape: ``[N, num_ws, w_dim]``."""
        return self.load_fake_codes()

    @property
    def fake_w(self) -> torch.Tensor | None:
        """The fakes' w codes ``[N, w_dim]`` when every fake's layers are equal, else None."""
        self.load_fake_codes()
        return self._w

    def load_fake_codes(self, *, progress: bool = False) -> torch.Tensor:
        """Load (once) every ``latent_code_w+.pt``; see :attr:`fake_codes`."""
        if self._codes is not None:
            return self._codes
        from tqdm import tqdm

        n, w, full, shape = len(self.fake_ids), None, None, None
        for i, h in enumerate(tqdm(self.fake_ids, desc="fake codes", unit="fake", disable=not progress)):
            path = self.code_path(h)
            code = load_code(path, "a fake's W+ code")
            if shape is None:
                shape = tuple(code.shape)
                w = torch.empty(n, shape[1])
            elif tuple(code.shape) != shape:
                raise InputError(f"{path}: W+ code of shape {list(code.shape)}, the first fake's is {list(shape)}")
            if full is None and not bool((code == code[:1]).all()):
                full = w[:i, None].expand(i, *shape).clone()  # layers differ: keep them all from now on
                full = torch.cat([full, torch.empty(n - i, *shape)])
            if full is not None:
                full[i] = code
            else:
                w[i] = code[0]
        if shape is None:
            raise InputError(f"{self.fake_dir / HASHES}: lists no fakes")
        self._w = None if full is not None else w
        self._codes = full if full is not None else w[:, None].expand(n, *shape)
        return self._codes

    @property
    def num_ws(self) -> int:
        return int(self._shape()[0])

    @property
    def w_dim(self) -> int:
        return int(self._shape()[1])

    def _shape(self) -> tuple[int, ...]:
        if self._codes is not None:
            return tuple(self._codes.shape[1:])
        return tuple(self.fake_code(self.fake_ids[0]).shape)

    def features(self, name: str = DEFAULT_FEATURES) -> torch.Tensor:
        """The fakes' features as the reference computed them (not normalised). Shape: ``[N, dim]``.

        From the stacked ``<name>_features.pt``, else stacked from the per-fake files.
        """
        from falco.models._checkpoint import load_checkpoint

        path = self.fake_dir / f"{name}_features.pt"
        if path.is_file():
            f = load_checkpoint(path)
            if not isinstance(f, torch.Tensor) or f.ndim != 2 or f.shape[0] != len(self.fake_ids):
                got = list(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__
                raise InputError(f"{path}: expected [{len(self.fake_ids)}, dim] features (one row per fake "
                                 f"of {HASHES}), got {got}")
            return f.detach().to(torch.float32, copy=True)
        first = self.fake_dir / self.fake_ids[0] / f"{name}_features.pt"
        if not first.is_file():
            raise InputError(f"{self.fake_dir}: no {name} features ({path.name} or <hash>/{path.name})")
        rows = []
        for h in self.fake_ids:
            p = self.fake_dir / h / f"{name}_features.pt"
            f = load_checkpoint(p) if p.is_file() else None
            if not isinstance(f, torch.Tensor) or f.reshape(-1).numel() == 0 or (rows and f.numel() != rows[0].numel()):
                raise InputError(f"{p}: missing or not a [1, dim] feature tensor")
            rows.append(f.detach().reshape(-1).float())
        return torch.stack(rows)

    # -- reals
    def aligned_path(self, real_id: str) -> Path:
        """The aligned crop invert.py inverted (``data/<id>_aligned.jpg``)."""
        if self.inv_dir is None:
            raise InputError(f"{self.root}: no inversions (datasets/inv/<dataset>/)")
        return self.inv_dir / "data" / f"{real_id}_aligned.jpg"

    def jobs(self) -> list[tuple[str, str, str]]:
        """``(real image name, real id, fake id)`` of every paired real image that has an inversion."""
        return [(name, image_id(name), h) for name, h in self.pairs.items() if image_id(name) in self.inverted]

    def describe(self) -> dict[str, Any]:
        """What a bank or a run records as its source."""
        return {"falco_workspace": str(self.root), "fake_dataset": self.fake_dir.name, "gan": self.gan,
                "truncation": self.truncation, "num_fakes": len(self.fake_ids), "generator": str(self.generator),
                "dataset": self.dataset, "pair_map": self.pair_map.name if self.pair_map else None}


# ----------------------------------------------------------------------------- reading


def read_workspace(root: str | Path, *, fake_dataset: str | Path | None = None, dataset: str | None = None,
                   pair_map: str | Path | None = None, inv_dir: str | Path | None = None) -> FalcoWorkspace:
    """Read a reference FALCO repository's outputs (nothing is loaded but lists and maps).

    Args:
        root: the repository root (or a fake dataset folder itself).
        fake_dataset: which ``datasets/fake/`` folder (name or path) when there are several.
        dataset: the real dataset (``'celebahq'``); default: the only one with inversions or pair
            maps. Given explicitly, its inversions and pair map must exist.
        pair_map: a map file (path, or name relative to the fake dataset folder) or its kind
            (``'clip_auto_euclidean'``); default ``farl_auto_cosine`` (then ``farl_brute_cosine``).
        inv_dir: the inversions folder (default ``datasets/inv/<dataset>``).

    Raises:
        InputError: naming the missing or malformed piece.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise InputError(f"FALCO workspace {str(root)!r} does not exist or is not a folder")
    root = root.absolute()
    fake_dir = _find_fake_dir(root, fake_dataset)
    if root.resolve() == fake_dir.resolve() and fake_dir.parent.name == "fake" \
            and fake_dir.parent.parent.name == "datasets":
        root = fake_dir.parent.parent.parent  # given the fake dataset folder itself
    args = _read_args(fake_dir)
    m = _DIR_RE.fullmatch(fake_dir.name)
    try:
        gan = str(args.get("gan") or (m and m["gan"]) or "")
        truncation = float(args["truncation"] if "truncation" in args else m["psi"])  # type: ignore[index]
        num_samples = int(args["num_samples"] if "num_samples" in args else m["num"])  # type: ignore[index]
    except (TypeError, ValueError, KeyError):
        raise InputError(f"{fake_dir}: no readable gan/truncation/num_samples in args.json or in the folder's name "
                         "(fake_dataset_<gan>-<truncation>-<num_samples>...)") from None
    if not gan:
        raise InputError(f"{fake_dir / 'args.json'}: no 'gan'")
    fake_ids = _read_hashes(fake_dir)
    features = tuple(sorted(p.name[:-len("_features.pt")] for p in fake_dir.glob("*_features.pt")))
    ws = FalcoWorkspace(root=root, fake_dir=fake_dir, fake_ids=fake_ids, gan=gan, truncation=truncation,
                        num_samples=num_samples, generator=root / GENERATOR_DIR / f"{gan}.pth",
                        feature_names=features, args=args)
    ws.dataset = _pick_dataset(root, fake_dir, dataset, inv_dir)
    if ws.dataset is None:
        return ws
    required = dataset is not None
    inv = Path(inv_dir) if inv_dir is not None else root / INV_ROOT / ws.dataset
    if (inv / "latent_codes").is_dir():
        ws.inv_dir, ws.inverted = inv, CodeFiles(inv / "latent_codes")
    elif required or inv_dir is not None:
        raise InputError(f"{inv / 'latent_codes'}: no inversions of {ws.dataset!r} (run the reference's invert.py)")
    path = _find_pair_map(fake_dir, ws.dataset, pair_map)
    if path is None and (required or pair_map is not None):
        raise InputError(f"{fake_dir}: no pair map of {ws.dataset!r} (farl_auto_cosine_nn_map_{ws.dataset}.json; "
                         f"maps here: {', '.join(_map_names(fake_dir)) or 'none'}); run the reference's pair_nn.py")
    if path is not None:
        ws.pair_map, ws.pairs = path, _read_pair_map(path, ws.fake_index)
    return ws


def _find_fake_dir(root: Path, fake_dataset: str | Path | None) -> Path:
    if fake_dataset is not None:
        for cand in (root / FAKE_ROOT / str(fake_dataset), Path(fake_dataset)):
            if (cand / HASHES).is_file() or (cand.is_dir() and cand.name.startswith("fake_dataset_")):
                return cand
        raise InputError(f"fake dataset {str(fake_dataset)!r}: not a folder with {HASHES} (under {root / FAKE_ROOT})")
    if (root / HASHES).is_file():
        return root
    base = root / FAKE_ROOT
    found = sorted(p for p in base.glob("*") if p.is_dir()
                   and (p.name.startswith("fake_dataset_") or (p / HASHES).is_file())) if base.is_dir() else []
    if not found:
        raise InputError(f"{root}: no FALCO fake dataset (datasets/fake/fake_dataset_*/); run the reference's "
                         "create_fake_dataset.py there, or pass the fake dataset folder")
    if len(found) > 1:
        raise InputError(f"{base}: several fake datasets ({', '.join(p.name for p in found)}); choose one "
                         "(--fake-dataset NAME)")
    return found[0]


def _read_args(fake_dir: Path) -> dict:
    path = fake_dir / "args.json"
    return read_json_object(path, unreadable="unreadable JSON") if path.exists() else {}


def _read_hashes(fake_dir: Path) -> list[str]:
    path = fake_dir / HASHES
    if not path.is_file():
        raise InputError(f"{path}: missing (create_fake_dataset.py writes it after its last fake: "
                         "did it finish?)")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: unreadable ({exc})") from None
    ids = [s.strip() for s in lines if s.strip()]
    if not ids:
        raise InputError(f"{path}: lists no fakes")
    bad = next((h for h in ids if "/" in h or "\\" in h or h.startswith(".")), None)
    if bad is not None:
        raise InputError(f"{path}: {bad!r} is not a fake's folder name")
    if len(set(ids)) != len(ids):
        dup = next(h for i, h in enumerate(ids) if h in ids[:i])
        raise InputError(f"{path}: fake {dup!r} is listed twice")
    missing = [h for h in ids if not (fake_dir / h / CODE_FILE).is_file()]
    if missing:
        raise InputError(f"{fake_dir / missing[0] / CODE_FILE}: missing ({len(missing)} of {len(ids)} fakes "
                         f"listed in {HASHES} have no {CODE_FILE})")
    return ids


def _map_names(fake_dir: Path) -> list[str]:
    return sorted(p.name for p in fake_dir.glob("*.json") if _MAP_RE.fullmatch(p.name))


def _pick_dataset(root: Path, fake_dir: Path, dataset: str | None, inv_dir: str | Path | None) -> str | None:
    if dataset is not None:
        return dataset
    names = {m["dataset"] for p in fake_dir.glob("*.json") if (m := _MAP_RE.fullmatch(p.name))}
    if inv_dir is None and (root / INV_ROOT).is_dir():
        names |= {p.name for p in (root / INV_ROOT).iterdir() if (p / "latent_codes").is_dir()}
    if len(names) > 1:
        raise InputError(f"{root}: several real datasets ({', '.join(sorted(names))}); choose one (--dataset NAME)")
    return next(iter(names), None)


def _find_pair_map(fake_dir: Path, dataset: str, pair_map: str | Path | None) -> Path | None:
    if pair_map is None:
        for algo in ("auto", "brute"):
            path = fake_dir / f"farl_{algo}_cosine_nn_map_{dataset}.json"
            if path.is_file():
                return path
        return next(iter(sorted(fake_dir.glob(f"farl_*_cosine_nn_map_{dataset}.json"))), None)
    for cand in (Path(pair_map), fake_dir / str(pair_map), fake_dir / f"{pair_map}_nn_map_{dataset}.json"):
        if cand.is_file():
            return cand
    raise InputError(f"pair map {str(pair_map)!r}: no such file in {fake_dir} "
                     f"(maps there: {', '.join(_map_names(fake_dir)) or 'none'})")


def _read_pair_map(path: Path, fake_index: Mapping[str, int]) -> dict[str, str]:
    data = read_json_object(path, unreadable="unreadable JSON", expected="a JSON object {real image name: fake hash}")
    pairs: dict[str, str] = {}
    for name, value in data.items():
        if isinstance(value, list) and value:  # later versions store [hash, ...]
            value = value[0]
        if not isinstance(value, str):
            raise InputError(f"{path}: real image {name!r} maps to {value!r}, expected a fake hash")
        if value not in fake_index:
            raise InputError(f"{path}: real image {name!r} is paired with fake {value!r}, which is not listed "
                             f"in {HASHES}")
        pairs[str(name)] = value
    return pairs
