"""Reading a finished fake bank: codes, features, FAISS search and pairing.

Queries. A real face's features must be computed like the fakes' were: with the bank's
extractor and the preprocessing its manifest records (``features.preprocessing``; for banks
built before it was recorded, the extractor's ``legacy_preprocessing``), which
:meth:`Bank.query_extractor` and :meth:`Bank.query_features` apply.

Recall. When the bank's index is approximate (IVF, HNSW; ``'auto'`` builds one only beyond
250,000 fakes), every :attr:`Bank.recall_check_every`-th query through the index (the first
one included) is also searched exactly, and :attr:`Bank.pairing_recall_at_1` is the fraction of
those whose returned fake is as close as the exact nearest (ties count), measured on the
run's actual queries. The exact check reads the bank's features into memory (2 GB per 10^6
512-d fakes) and costs one brute-force search per checked query.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np
import torch

from falco.bank.build import generator_fingerprint
from falco.bank.layout import (
    BUILD_NAME,
    CHUNK_DIR,
    FORMAT,
    MANIFEST_NAME,
    _check_int,
    _chunk_meta,
    _chunk_name,
)
from falco.errors import InputError
from falco.bank.features import extractor_fingerprint
from falco.run.inputs import (
    load_tensors,
    read_json_object,
)
from falco.bank.index import (
    FeatureIndex,
    as_features,
    check_metric,
    exact_search,
)
from falco.bank.pairing import pair_without_reuse

#: Approximate indexes: every N-th query (the first included) is also searched exactly.
RECALL_CHECK_EVERY = 10


def bank_status(path: str | os.PathLike) -> dict:
    """What a bank directory holds, without loading it.

    Returns:
        ``{"state": "complete" | "unfinished" | "absent" | "not a bank", "count", "chunks_done",
        "chunks_total", "manifest" | "build"}``.
    """
    path = Path(path)
    if not path.is_dir():
        return {"state": "absent"}
    if (path / MANIFEST_NAME).is_file():
        m = read_json_object(path / MANIFEST_NAME)
        return {"state": "complete", "count": m.get("count"), "chunks_done": len(m.get("chunks", [])),
                "chunks_total": len(m.get("chunks", [])), "manifest": m}
    if (path / BUILD_NAME).is_file():
        b = read_json_object(path / BUILD_NAME)
        num, size, key = int(b.get("num", 0)), int(b.get("settings", {}).get("chunk_size", 1)), b.get("key")
        total = math.ceil(num / size) if num else 0
        done = sum(1 for c in range(total)
                   if (_chunk_meta(path / CHUNK_DIR / f"{_chunk_name(c)}.safetensors") or {}).get("key") == key)
        return {"state": "unfinished", "count": num, "chunks_done": done, "chunks_total": total, "build": b}
    return {"state": "not a bank"}


class Bank:
    """A finished fake bank (open with :meth:`open`).

    Attributes:
        path: the bank directory.
        manifest: its ``manifest.json`` (generator and extractor identity, truncation, seed,
            count, w_dim, num_ws, index, chunks...).
        recall_check_every: with an approximate index, every N-th query is also searched
            exactly to measure :attr:`pairing_recall_at_1` (0: never).

    ``ws``, ``features`` and ``index`` load on first use.
    """

    def __init__(self, path: Path, manifest: dict) -> None:
        self.path = Path(path)
        self.manifest = manifest
        self._ws: torch.Tensor | None = None
        self._features: np.ndarray | None = None
        self._index: FeatureIndex | None = None
        self._sheet: tuple[int, np.ndarray] | None = None
        self._query_ex: tuple[Any, Any] | None = None  # (extractor given, its view with our preprocessing)
        self.recall_check_every = RECALL_CHECK_EVERY
        self._queries_seen = 0  # queries through an approximate index
        self._checked = 0
        self._hits = 0

    # -- opening
    @classmethod
    def open(cls, path: str | os.PathLike) -> Bank:
        """Open a finished bank.

        Raises:
            InputError: no such folder, not a bank, an unfinished bank (re-run the build), a
                format this falco does not read, or missing chunk files.
        """
        path = Path(path)
        st = bank_status(path)
        if st["state"] == "absent":
            raise InputError(f"bank {str(path)!r} does not exist")
        if st["state"] == "not a bank":
            raise InputError(f"{str(path)!r} is not a fake bank (no {MANIFEST_NAME}); build one with "
                             f"`falco bank build --out {path} --num N`")
        if st["state"] == "unfinished":
            raise InputError(f"bank {str(path)!r} is unfinished ({st['chunks_done']} of {st['chunks_total']} chunks "
                             f"written): re-run the same `falco bank build --out {path} ...` to finish it")
        m = st["manifest"]
        if m.get("format") != FORMAT:
            raise InputError(f"bank {str(path)!r}: format {m.get('format')!r}, expected {FORMAT!r}")
        missing = [c["file"] for c in m["chunks"] if not (path / c["file"]).is_file()]
        if not (path / m["index"]["file"]).is_file():
            missing.append(m["index"]["file"])
        if missing:
            raise InputError(f"bank {str(path)!r} is damaged: missing {', '.join(missing[:5])}; rebuild it")
        return cls(path, m)

    # -- contents
    def __len__(self) -> int:
        return int(self.manifest["count"])

    def __repr__(self) -> str:
        m = self.manifest
        return (f"Bank({str(self.path)!r}, count={len(self)}, features={m['features']['name']!r} "
                f"dim {m['features']['dim']} preprocessing {self.preprocessing or 'not recorded'}, "
                f"truncation={m['truncation']}, seed={m['seed']}, index={m['index']['kind']!r})")

    @property
    def w_dim(self) -> int:
        return int(self.manifest["w_dim"])

    @property
    def num_ws(self) -> int:
        return int(self.manifest["num_ws"])

    @property
    def dim(self) -> int:
        """Feature width."""
        return int(self.manifest["features"]["dim"])

    @property
    def preprocessing(self) -> str | None:
        """The recorded preprocessing id of the fakes' features (e.g. ``'clip-224-[0,1]'``), or None
        for a bank built before it was recorded (its extractor's ``legacy_preprocessing`` is implied)."""
        return self.manifest["features"].get("preprocessing")

    @property
    def approximate(self) -> bool:
        """Whether the index is approximate (IVF, HNSW) rather than exact (flat)."""
        return self.manifest["index"]["kind"] != "flat"

    @property
    def pairing_checked(self) -> int:
        """How many queries were also searched exactly to measure :attr:`pairing_recall_at_1`."""
        return self._checked

    @property
    def pairing_recall_at_1(self) -> float | None:
        """Recall@1 of the approximate index measured on the queries so far (None before any check)."""
        return self._hits / self._checked if self._checked else None

    def _load(self) -> None:
        ws, feats = [], []
        for c in self.manifest["chunks"]:
            t = load_tensors(self.path / c["file"])
            if t["ws"].shape[0] != c["count"] or t["features"].shape[0] != c["count"]:
                raise InputError(f"bank {str(self.path)!r}: {c['file']} holds {t['ws'].shape[0]} fakes, "
                                 f"the manifest says {c['count']}; rebuild the bank")
            ws.append(t["ws"])
            feats.append(t["features"].numpy())
        self._ws = torch.cat(ws)
        self._features = np.ascontiguousarray(np.concatenate(feats))

    @property
    def ws(self) -> torch.Tensor:
        """The fakes' w codes (not W+). Shape: ``[N, w_dim]`` float32 (CPU)."""
        if self._ws is None:
            self._load()
        return self._ws

    @property
    def features(self) -> np.ndarray:
        """The fakes' features, L2-normalised. Shape: ``[N, dim]`` float32."""
        if self._features is None:
            self._load()
        return self._features

    @property
    def index(self) -> FeatureIndex:
        """The FAISS index (exact up to 250,000 fakes by default; see the manifest's ``index``)."""
        if self._index is None:
            self._index = FeatureIndex.load(self.path / self.manifest["index"]["file"])
        return self._index

    def w_plus(self, indices: Any) -> torch.Tensor:
        """W+ codes of bank entries (w repeated over the layers).

        Shape:
            indices ``[Q]`` -> ``[Q, num_ws, w_dim]``.
        """
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64).reshape(-1))
        if len(idx) and (idx.min() < 0 or idx.max() >= len(self)):
            raise InputError(f"indices: expected values in [0, {len(self)}), got {idx.min().item()}..{idx.max().item()}")
        return self.ws[idx][:, None].repeat(1, self.num_ws, 1)

    def thumbnail(self, i: int) -> np.ndarray:
        """Fake ``i``'s thumbnail, cut from its chunk's contact sheet.

        Shape:
            returns ``[size, size, 3]`` uint8.
        """
        from PIL import Image

        th = self.manifest.get("thumbnails")
        if not th:
            raise InputError(f"bank {str(self.path)!r} was built without thumbnails")
        i = _check_int(i, "i", 0, len(self) - 1)
        c, j = divmod(i, int(self.manifest["chunk_size"]))
        if self._sheet is None or self._sheet[0] != c:
            with Image.open(self.path / self.manifest["chunks"][c]["thumbnails"]) as im:
                self._sheet = (c, np.asarray(im.convert("RGB")))
        s, cols = int(th["size"]), int(th["cols"])
        r, k = divmod(j, cols)
        return self._sheet[1][r * s:(r + 1) * s, k * s:(k + 1) * s].copy()

    # -- queries
    def query_extractor(self, extractor: Any) -> Any:
        """``extractor`` with the preprocessing this bank's fakes were embedded with (the same
        network, shared), so that real faces are embedded like the fakes.

        The recorded ``features.preprocessing``, or for a bank that recorded none the extractor's
        ``legacy_preprocessing``; an extractor without preprocessing ids is used as it is.

        Raises:
            InputError: the extractor cannot apply the bank's preprocessing.
        """
        if self._query_ex is not None and self._query_ex[0] is extractor:
            return self._query_ex[1]
        want = self.preprocessing or getattr(extractor, "legacy_preprocessing", None)
        have = getattr(extractor, "preprocessing", None)
        view = extractor
        if want is not None and have is not None and want != have:
            try:
                view = extractor.with_preprocessing(want)
            except InputError as exc:
                raise InputError(f"extractor: bank {str(self.path)!r} holds features of preprocessing {want!r}, "
                                 f"which this {extractor.name!r} extractor cannot apply ({exc})") from None
        self._query_ex = (extractor, view)
        return view

    def query_features(self, extractor: Any, images: torch.Tensor) -> np.ndarray:
        """Features of real faces for this bank's search: :meth:`query_extractor` on ``images``.

        Shape:
            images ``[B, 3, H, W]`` in [-1, 1] (aligned crops, like the fakes' 256 px) -> ``[B, dim]`` float32.
        """
        return self.query_extractor(extractor)(images).detach().float().cpu().numpy()

    # -- search
    def search(self, features: Any, k: int = 1, metric: str = "cosine", *,
               exact: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """k nearest fakes of each query.

        Cosine searches use the bank's index (exact unless the manifest's index kind is
        'ivf'/'hnsw'; ``exact=True`` forces brute force); 'l2' is always exact. Queries through an
        approximate index count towards :attr:`pairing_recall_at_1`.

        Shape:
            features ``[Q, dim]`` -> indices int64 ``[Q, k]``, distances float32 ``[Q, k]``.
        """
        metric = check_metric(metric)
        q = as_features(features, "features", dim=self.dim)
        if metric == "cosine" and not exact:
            idx, dist = self.index.search(q, k)
            short = (idx < 0).any(axis=1)  # an approximate index found fewer than k: search exactly
            if short.any():
                idx[short], dist[short] = exact_search(self.features, q[short], k=k, metric=metric)
            self._check_recall(q, dist[:, 0])
            return idx, dist
        return exact_search(self.features, q, k=k, metric=metric)

    def _check_recall(self, q: np.ndarray, found: np.ndarray | None = None) -> None:
        """Search the sampled queries of ``q`` exactly and count those the index answered as well.

        ``found``: the cosine distance of the fake the index gave each query (None: asked here).

        Shape:
            q ``[Q, dim]``; found ``[Q]``.
        """
        every = int(self.recall_check_every)
        if not self.approximate or every < 1:
            return
        pick = np.flatnonzero((self._queries_seen + np.arange(len(q))) % every == 0)
        self._queries_seen += len(q)
        if not len(pick):
            return
        if found is None:
            idx, dist = self.index.search(q[pick], 1)
            got = np.where(idx[:, 0] >= 0, dist[:, 0], np.inf)
        else:
            got = found[pick]
        truth = exact_search(self.features, q[pick], k=1)[1][:, 0].astype(np.float64)
        hit = got <= truth + 1e-5 * np.maximum(1.0, np.abs(truth))  # as close as the nearest: ties count
        self._checked += len(pick)
        self._hits += int(hit.sum())

    def pair(self, features: Any, *, reuse: bool = True, k: int = 8,
             taken: Collection[int] | None = None) -> np.ndarray:
        """One bank index per query (cosine): the nearest fake, or with ``reuse=False`` a
        different fake for every query, none of them in ``taken``.

        Without reuse this is the global greedy over the free fakes
        (:func:`falco.bank.pairing.pair_without_reuse`; ``k`` is its initial candidate list
        length). ``taken`` (fakes given out earlier) is ignored with ``reuse=True``. Either way,
        with an approximate index the queries count towards :attr:`pairing_recall_at_1` (the
        index's nearest fake against the exact one).

        Raises:
            InputError: without reuse, more queries than free fakes, or a ``taken`` index
                outside the bank.

        Shape:
            features ``[Q, dim]`` -> ``[Q]`` int64.
        """
        q = as_features(features, "features", dim=self.dim)
        if reuse:
            return self.search(q, k=1)[0][:, 0]
        n_taken = 0 if taken is None else len(set(taken))
        if len(q) + n_taken > len(self):
            raise InputError(f"--no-reuse: the bank has {len(self)} fakes and {n_taken} are taken, "
                             f"{len(q)} more faces need one each; build a larger bank")
        self._check_recall(q)
        return pair_without_reuse(self.index, q, k=min(int(k), len(self)), taken=taken)

    # -- checks
    def check_compatible(self, G: torch.nn.Module | None = None, extractor: Any = None) -> None:
        """Refuse a generator or extractor other than the ones this bank was built with.

        Either may be None (not checked).

        The extractor is compared as :meth:`query_extractor` sets it up (with the bank's
        preprocessing), i.e. as the bank's queries will be embedded.

        Raises:
            InputError: naming what differs (w_dim, num_ws, weights; extractor name, width,
                weights, a preprocessing it cannot apply).
        """
        m, where = self.manifest, f"bank {str(self.path)!r}"
        if G is not None:
            g = m["generator"]
            if int(G.w_dim) != self.w_dim or int(G.num_ws) != self.num_ws:
                raise InputError(f"generator: {where} was built with a generator of w_dim {self.w_dim} and "
                                 f"{self.num_ws} ws, got w_dim {G.w_dim} and {G.num_ws} ws")
            if generator_fingerprint(G) != g["fingerprint"]:
                made = g.get("name") or "another generator"
                sha = f" (file sha256 {g['sha256'][:12]}...)" if g.get("sha256") else ""
                raise InputError(f"generator: {where} was built with {made}{sha}; this generator's weights "
                                 "differ, so the bank's w codes do not render the same faces: rebuild the bank")
        if extractor is not None:
            f = m["features"]
            if str(extractor.name) != f["name"] or int(extractor.dim) != int(f["dim"]):
                raise InputError(f"extractor: {where} holds {f['name']!r} features of width {f['dim']}, "
                                 f"got {extractor.name!r} of width {extractor.dim}")
            fp = extractor_fingerprint(self.query_extractor(extractor))  # with the bank's preprocessing
            if fp is not None and f.get("fingerprint") and fp != f["fingerprint"]:
                raise InputError(f"extractor: {where} was embedded by another {f['name']!r} network "
                                 f"(weights {f.get('source') or 'unknown'}); features would not be comparable")

    def verify(self) -> list[str]:
        """Re-hash every chunk file against the manifest; returns the files that differ."""
        return [c["file"] for c in self.manifest["chunks"]
                if hashlib.sha256((self.path / c["file"]).read_bytes()).hexdigest() != c["sha256"]]
