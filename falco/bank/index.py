"""Nearest-neighbour search over face features: exact search and the FAISS index.

FALCO starts each optimisation from the generated (fake) face whose features are closest to
the real face's. This module finds those neighbours with FAISS; :mod:`falco.bank.pairing`
pairs real faces with fakes without reuse, and :mod:`falco.bank` renders, embeds and stores
the fakes.

Distances (the same everywhere in this module, returned as float32):

* ``metric='cosine'``: ``1 - cos(a, b)`` in [0, 2]; both sides are L2-normalised first
  (a zero vector is an error). Search runs on an inner-product index of unit vectors.
* ``metric='l2'``: the Euclidean distance ``||a - b||``, **not** its square (FAISS reports
  squares; we take the square root).

Exact search (``exact_search``, ``FeatureIndex(kind='flat')``) takes FAISS's float32 top-k plus
a few spare candidates, recomputes their distances in float64 and sorts by
(distance, index): distances are exact for float32 inputs and ties go to the lowest index.
A row whose spare candidates are still tied with its k-th is searched again wider, so a tie
is never cut at an arbitrary index.

Index kinds (``FeatureIndex.build(kind=...)``):

* ``'flat'`` (the default): exact brute force (IndexFlatIP / IndexFlatL2),
  BLAS-bound.
* ``'ivf'``: IndexIVFFlat, ``nlist`` = 4 sqrt(N) rounded to a power of two (1024 at 10^5,
  4096 at 10^6), k-means on 40 points per list, 10 iterations (spherical for cosine).
  ``nprobe`` is *calibrated* at build time unless given: the smallest power of two whose
  recall@1 reaches ``target_recall`` (0.95) plus two standard errors, measured on
  ``calibration_size`` (1000) queries the index has not seen: the ``calibration_queries``
  you pass (e.g. a sample of real faces' features), else the bank's last vectors, searched
  before they are added. The measured value is kept in ``params['calibrated_recall']``.
* ``'hnsw'``: IndexHNSWFlat (M=32, efConstruction=40), efSearch calibrated the same way.
  Opt-in only: no training and cheap single queries, but slow to build, and at equal recall
  slower than IVF on batches of queries (see ``scripts/README.md``).
* ``'auto'``: flat up to ``AUTO_FLAT_MAX`` (250,000) vectors, so a bank of the paper's size
  (60,000 fakes) is searched exactly; beyond that IVF with calibrated nprobe, falling back to
  flat (with a warning) when the target recall needs more than ``AUTO_MAX_PROBE_FRACTION``
  (1/64) of the lists: scanning IVF lists is memory-bound and much slower per vector than the
  BLAS brute force, so beyond that the approximation buys nothing. On i.i.d. random vectors
  (the nearest neighbour barely closer than any other point) IVF needs most lists, so
  ``'auto'`` falls back to exact search; on clustered data such as face features (low
  intrinsic dimension) it keeps IVF. A bank with an approximate index measures its recall@1
  on the run's own queries as well (:attr:`falco.bank.Bank.pairing_recall_at_1`).

Timings and recall of each kind against scikit-learn: ``scripts/bench_search.py`` prints them
and ``scripts/README.md`` records a run.

GPU (:mod:`falco.bank.gpu`): exact search and :meth:`FeatureIndex.load` (``device='auto'``) run on
the GPU when FAISS has GPU support (``faiss-gpu``, the ``gpu`` extra) and sees one, else on the CPU;
``device='cuda'`` without one warns and uses the CPU. ``$FALCO_FAISS_DEVICE`` overrides ``auto``.
FAISS's thread count (``faiss.omp_set_num_threads``) is left as it is.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Literal

import faiss
import numpy as np

from falco.bank.gpu import faiss_gpu_status, knn as _device_knn, search_device
from falco.errors import InputError

Metric = Literal["cosine", "l2"]
Kind = Literal["auto", "flat", "ivf", "hnsw"]

METRICS = ("cosine", "l2")
KINDS = ("auto", "flat", "ivf", "hnsw")
AUTO_FLAT_MAX = 250_000  # 'auto' searches exactly up to this many vectors
AUTO_MAX_PROBE_FRACTION = 1 / 64
_SPARE = 8  # extra exact candidates fetched for the float64 re-ranking
_TIE_RTOL = 1e-5
_TRAIN_PER_LIST = 40  # k-means training points per IVF list (FAISS warns below 39)


# ----------------------------------------------------------------------------- validation


def as_features(x: Any, name: str, *, dim: int | None = None) -> np.ndarray:
    """Return ``x`` as a C-contiguous float32 [N, D] array, or raise InputError.

    Accepts numpy arrays, torch tensors (detached, moved to the CPU) and nested sequences.

    Shape:
        x: [N, D] (N >= 1, D >= 1; D must equal ``dim`` when given).
    """
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # a torch tensor, without importing torch
        x = x.detach().cpu().float().numpy()
    try:
        arr = np.asarray(x)
    except Exception as exc:  # ragged lists and the like
        raise InputError(
            f"{name}: expected a 2-D array of features, got {type(x).__name__}"
        ) from exc
    if arr.ndim != 2:
        raise InputError(f"{name}: expected a 2-D array [N, D], got shape {tuple(arr.shape)}")
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise InputError(f"{name}: expected a non-empty [N, D] array, got shape {tuple(arr.shape)}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise InputError(f"{name}: expected real numbers, got dtype {arr.dtype}")
    if dim is not None and arr.shape[1] != dim:
        raise InputError(f"{name}: expected feature width {dim}, got shape {tuple(arr.shape)}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).any(axis=1).sum())
        raise InputError(f"{name}: {bad} row(s) contain NaN or infinite values")
    return arr


def check_metric(metric: Any) -> Metric:
    """Return ``metric`` if it is 'cosine' or 'l2', else raise InputError."""
    if metric not in METRICS:
        raise InputError(f"metric: expected one of {METRICS}, got {metric!r}")
    return metric


def _check_k(k: Any, ntotal: int, name: str = "k") -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise InputError(f"{name}: expected an integer, got {k!r}")
    if not 1 <= k <= ntotal:
        raise InputError(f"{name}: expected 1 <= {name} <= {ntotal} (the bank size), got {k}")
    return int(k)


def _normalize(x: np.ndarray, name: str) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if (norms == 0).any():
        row = int(np.flatnonzero(norms[:, 0] == 0)[0])
        raise InputError(f"{name}: row {row} is a zero vector, which has no cosine distance")
    return x / norms


def _prepare(x: Any, name: str, metric: Metric, dim: int | None = None) -> np.ndarray:
    arr = as_features(x, name, dim=dim)
    return _normalize(arr, name) if metric == "cosine" else arr


def _faiss_metric(metric: Metric) -> int:
    return faiss.METRIC_INNER_PRODUCT if metric == "cosine" else faiss.METRIC_L2


def _raw_to_distance(raw: np.ndarray, metric: Metric) -> np.ndarray:
    """FAISS scores (inner products / squared L2) -> our distances (float32, inf if missing)."""
    raw = raw.astype(np.float64)
    dist = 1.0 - raw if metric == "cosine" else np.sqrt(np.maximum(raw, 0.0))
    return dist.astype(np.float32)


# ----------------------------------------------------------------------------- exact search


def _exact_rows(base: np.ndarray, q: np.ndarray, idx: np.ndarray, metric: Metric) -> np.ndarray:
    """float64 distances between each query and its candidates.

    Shape:
        base: [N, D]; q: [Q, D]; idx: [Q, C] -> [Q, C]
    """
    out = np.empty(idx.shape, np.float64)
    step = max(1, 2**22 // max(1, idx.shape[1] * base.shape[1]))
    for s in range(0, len(q), step):
        cand = base[idx[s : s + step]].astype(np.float64)  # [B, C, D]
        qq = q[s : s + step, None, :].astype(np.float64)
        if metric == "cosine":  # renormalise in float64: a vector is at distance ~1e-16 of itself
            cand /= np.linalg.norm(cand, axis=2, keepdims=True)
            qq /= np.linalg.norm(qq, axis=2, keepdims=True)
            out[s : s + step] = 1.0 - np.einsum("bcd,bd->bc", cand, qq[:, 0])
        else:
            out[s : s + step] = np.sqrt(np.einsum("bcd,bcd->bc", cand - qq, cand - qq))
    return out


def _exact_knn(
    base: np.ndarray, q: np.ndarray, k: int, metric: Metric, searcher: Any = None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k with float64 re-ranking and lowest-index tie-breaking.

    ``base`` and ``q`` are already prepared (normalised for cosine). ``searcher(q, kc)`` returns
    FAISS (raw scores, labels); by default ``faiss.knn`` on ``base``.

    Shape:
        base: [N, D]; q: [Q, D] -> indices int64 [Q, k], distances float32 [Q, k]
    """
    n = base.shape[0]
    if searcher is None:
        device = search_device()[0]

        def searcher(qq: np.ndarray, kc: int) -> tuple[np.ndarray, np.ndarray]:
            return _device_knn(qq, base, kc, _faiss_metric(metric), device)

    out_i = np.empty((len(q), k), np.int64)
    out_d = np.empty((len(q), k), np.float32)
    rows = np.arange(len(q))
    kc = min(n, k + _SPARE)
    while len(rows):
        raw, labels = searcher(q[rows], kc)
        # Rows whose last candidate is (nearly) tied with the k-th may hide tied vectors
        # beyond the list: search them again, wider.
        score = -raw if metric == "cosine" else raw
        gap = score[:, -1] - score[:, k - 1]
        tol = _TIE_RTOL * np.maximum(1.0, np.abs(score[:, k - 1]))
        done = (gap > tol) | (kc == n)
        d64 = _exact_rows(base, q[rows[done]], labels[done], metric)
        lab = labels[done]
        order = np.lexsort((lab, d64), axis=-1)[:, :k] if d64.size else np.empty((0, k), np.int64)
        out_i[rows[done]] = np.take_along_axis(lab, order, axis=1)
        out_d[rows[done]] = np.take_along_axis(d64, order, axis=1).astype(np.float32)
        rows = rows[~done]
        kc = min(n, kc * 2)
    if metric == "cosine":
        np.clip(out_d, 0.0, 2.0, out=out_d)
    return out_i, out_d


def exact_search(
    bank_features: Any, queries: Any, k: int = 1, metric: Metric = "cosine"
) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbours of each query among the bank features (brute force, FAISS).

    Args:
        bank_features: the fakes' features (numpy or torch).
        queries: the real faces' features, same width.
        k: neighbours per query, 1 <= k <= N.
        metric: 'cosine' (distance 1 - cos) or 'l2' (Euclidean distance, not squared).

    Returns:
        (indices, distances), sorted by increasing distance, ties by lowest index.

    Shape:
        bank_features: [N, D]; queries: [Q, D] -> indices int64 [Q, k], distances float32 [Q, k]
    """
    metric = check_metric(metric)
    base = _prepare(bank_features, "bank_features", metric)
    q = _prepare(queries, "queries", metric, dim=base.shape[1])
    k = _check_k(k, base.shape[0])
    return _exact_knn(base, q, k, metric)


# ----------------------------------------------------------------------------- the index


def _gpu_available() -> bool:
    return faiss_gpu_status()[0] > 0


def default_nlist(n: int) -> int:
    """IVF list count: 4 sqrt(n) rounded to a power of two, at least 39 training points a list."""
    nlist = 2 ** round(np.log2(max(1.0, 4 * np.sqrt(n))))
    return int(max(1, min(nlist, n // 39, 65536)))


class FeatureIndex:
    """A FAISS index over bank features, with its metric, kind and search parameters.

    Build with :meth:`build`, reload with :meth:`load`. ``params`` holds what was used
    (``nlist``/``nprobe`` for IVF, ``M``/``efConstruction``/``efSearch`` for HNSW) and,
    when calibrated, ``calibrated_recall``.
    """

    def __init__(
        self,
        index: Any,
        metric: Metric,
        kind: str,
        params: dict[str, Any] | None = None,
        device: str = "cpu",
    ) -> None:
        self._cpu_index = index
        self.metric: Metric = check_metric(metric)
        self.kind = kind
        self.params: dict[str, Any] = dict(params or {})
        self.device = "cpu"
        self._index = index
        self._apply_params()
        if device != "cpu":
            self.to(device)

    # -- properties
    @property
    def ntotal(self) -> int:
        """Number of stored vectors."""
        return int(self._cpu_index.ntotal)

    @property
    def dim(self) -> int:
        """Feature width."""
        return int(self._cpu_index.d)

    @property
    def index(self) -> Any:
        """The underlying FAISS index (on the current device)."""
        return self._index

    def __repr__(self) -> str:
        return f"FeatureIndex(kind={self.kind!r}, metric={self.metric!r}, ntotal={self.ntotal}, dim={self.dim}, params={self.params}, device={self.device!r})"

    # -- construction
    @classmethod
    def build(
        cls,
        features: Any,
        metric: Metric = "cosine",
        kind: Kind = "flat",
        *,
        device: str = "cpu",
        nlist: int | None = None,
        nprobe: int | None = None,
        M: int = 32,
        ef_construction: int = 40,
        ef_search: int | None = None,
        target_recall: float = 0.95,
        calibration_queries: Any = None,
        calibration_size: int = 1000,
        seed: int = 0,
    ) -> FeatureIndex:
        """Build an index over ``features``.

        Args:
            features: bank features (numpy or torch).
            metric: 'cosine' or 'l2'.
            kind: 'flat' (exact, default), 'ivf', 'hnsw', or 'auto' (see the module notes).
            device: 'cpu' or 'cuda' (flat and IVF only; falls back to CPU with a warning).
            nlist, nprobe: IVF lists and lists probed; ``nprobe=None`` calibrates it.
            M, ef_construction, ef_search: HNSW graph degree and beam widths;
                ``ef_search=None`` calibrates it.
            target_recall: recall@1 the calibration aims for.
            calibration_queries: features to calibrate on (default: ``calibration_size``
                bank vectors, searched leave-one-out).
            calibration_size: how many queries to calibrate on.
            seed: seeds the k-means training sample and initialisation.

        Shape:
            features: [N, D]; calibration_queries: [C, D]
        """
        metric = check_metric(metric)
        if kind not in KINDS:
            raise InputError(f"kind: expected one of {KINDS}, got {kind!r}")
        if not 0.0 < float(target_recall) <= 1.0:
            raise InputError(f"target_recall: expected a value in (0, 1], got {target_recall!r}")
        if device not in ("cpu", "cuda"):
            raise InputError(f"device: expected 'cpu' or 'cuda', got {device!r}")
        base = _prepare(features, "features", metric)
        n, d = base.shape
        calib = (
            None
            if calibration_queries is None
            else _prepare(calibration_queries, "calibration_queries", metric, dim=d)
        )
        fm = _faiss_metric(metric)

        if kind == "auto" and n <= AUTO_FLAT_MAX:
            kind = "flat"
        if kind == "flat":
            return cls(_flat(base, metric), metric, "flat", {}, device)

        if kind in ("ivf", "auto"):
            nl = default_nlist(n) if nlist is None else _check_k(nlist, n, "nlist")
            quantizer = faiss.IndexFlatIP(d) if metric == "cosine" else faiss.IndexFlatL2(d)
            index = faiss.IndexIVFFlat(quantizer, d, nl, fm)  # the wrapper keeps quantizer alive
            index.cp.niter = 10
            index.cp.max_points_per_centroid = _TRAIN_PER_LIST
            index.cp.seed = seed
            index.cp.spherical = metric == "cosine"
            rng = np.random.default_rng(seed)
            n_train = min(n, nl * _TRAIN_PER_LIST)
            train = base if n_train == n else base[np.sort(rng.choice(n, n_train, replace=False))]
            index.train(train)
            params: dict[str, Any] = {"nlist": nl}
            grid = _powers_of_two(nl)
            if kind == "auto":  # beyond this fraction of the lists, exact search is faster
                grid = [v for v in grid if v <= max(1, nl * AUTO_MAX_PROBE_FRACTION)]
            knob = "nprobe"
            fixed = nprobe
        else:  # hnsw
            index = faiss.IndexHNSWFlat(d, int(M), fm)
            index.hnsw.efConstruction = int(ef_construction)
            params = {"M": int(M), "efConstruction": int(ef_construction)}
            knob, grid = "efSearch", [16, 32, 64, 128, 256, 512, 1024, 2048]
            fixed = ef_search

        if fixed is not None:
            index.add(base)
            params[knob] = _check_k(fixed, 10**9, knob)
            return cls(index, metric, kind if kind != "auto" else "ivf", params, device)

        # Calibrate on queries the index has not seen: the caller's, or the bank's last
        # vectors, searched before they are added (ids stay positional).
        held = 0 if calib is not None else min(int(calibration_size), n // 10)
        index.add(base[: n - held])
        if calib is not None:
            cq, cbase = calib[: int(calibration_size)], base
        else:
            cq, cbase = base[n - held :], base[: n - held]
        if len(cq):
            value, recall = _calibrate(index, knob, grid, cbase, cq, metric, target_recall)
        else:  # too small to calibrate: the most thorough setting
            value, recall = grid[-1], float("nan")
        if held:
            index.add(base[n - held :])
        params[knob] = value
        params["calibrated_recall"] = round(recall, 4)
        if kind == "auto":
            if not recall >= target_recall:
                warnings.warn(
                    f"kind='auto': IVF reaches recall@1 {recall:.3f} < {target_recall} with up to "
                    f"nprobe={value} of {params['nlist']} lists; using exact search instead",
                    stacklevel=2,
                )
                del index
                return cls(_flat(base, metric), metric, "flat", {}, device)
            kind = "ivf"
        return cls(index, metric, kind, params, device)

    def _apply_params(self) -> None:
        """Push ``params`` (nprobe / efSearch) into the FAISS index on its device."""
        if "nprobe" in self.params:
            if self.device == "cpu":
                faiss.extract_index_ivf(self._index).nprobe = int(self.params["nprobe"])
            else:  # pragma: no cover - needs faiss-gpu and a GPU
                faiss.GpuParameterSpace().set_index_parameter(
                    self._index, "nprobe", int(self.params["nprobe"])
                )
        if "efSearch" in self.params:  # HNSW always stays on the CPU
            self._cpu_index.hnsw.efSearch = int(self.params["efSearch"])

    def set_params(self, **params: int) -> None:
        """Change search parameters (``nprobe`` for IVF, ``efSearch`` for HNSW)."""
        allowed = {"ivf": {"nprobe"}, "hnsw": {"efSearch"}}.get(self.kind, set())
        for key, value in params.items():
            if key not in allowed:
                raise InputError(
                    f"{key}: not a search parameter of a {self.kind!r} index (allowed: {sorted(allowed)})"
                )
            self.params[key] = _check_k(value, 10**9, key)
        self._apply_params()

    def to(self, device: str) -> FeatureIndex:
        """Move the index to 'cuda' (when FAISS has a GPU) or back to 'cpu'; returns self."""
        if device not in ("cpu", "cuda"):
            raise InputError(f"device: expected 'cpu' or 'cuda', got {device!r}")
        if device == "cpu" or self.device == device:
            self._index, self.device = self._cpu_index, "cpu"
        elif not _gpu_available():
            warnings.warn(
                "device='cuda' but FAISS has no GPU support or sees no GPU; using the CPU",
                stacklevel=2,
            )
        elif self.kind == "hnsw":
            warnings.warn("FAISS has no GPU HNSW; keeping the HNSW index on the CPU", stacklevel=2)
        else:  # pragma: no cover - needs faiss-gpu and a GPU
            self._gpu_res = faiss.StandardGpuResources()
            self._index = faiss.index_cpu_to_gpu(self._gpu_res, 0, self._cpu_index)
            self.device = "cuda"
        self._apply_params()
        return self

    # -- search
    def _stored(self) -> np.ndarray:
        """Zero-copy view of a flat index's vectors (valid while the index lives)."""
        flat = self._cpu_index
        return faiss.rev_swig_ptr(flat.get_xb(), self.ntotal * self.dim).reshape(
            self.ntotal, self.dim
        )

    def search(self, queries: Any, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """k nearest stored vectors of each query.

        Flat indexes return exact results (float64 re-ranked, ties to the lowest index, as
        :func:`exact_search`); approximate ones return FAISS's results, sorted by
        (distance, index), with index -1 and distance inf where fewer than k were found.

        Shape:
            queries: [Q, D] -> indices int64 [Q, k], distances float32 [Q, k]
        """
        q = _prepare(queries, "queries", self.metric, dim=self.dim)
        k = _check_k(k, self.ntotal)
        if self.kind == "flat":
            return _exact_knn(self._stored(), q, k, self.metric, searcher=self._index.search)
        raw, labels = self._index.search(q, k)
        dist = _raw_to_distance(raw, self.metric)
        dist[labels < 0] = np.inf
        order = np.lexsort((labels, dist), axis=-1)
        return np.take_along_axis(labels, order, 1).astype(np.int64), np.take_along_axis(
            dist, order, 1
        )

    # -- persistence
    def save(self, path: str | os.PathLike) -> None:
        """Write the index with ``faiss.write_index`` (temp file in the same folder, then rename)."""
        from falco.run.atomic import atomic_path

        with atomic_path(path) as tmp:
            faiss.write_index(self._cpu_index, str(tmp))

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "auto") -> FeatureIndex:
        """Read an index written by :meth:`save`; metric, kind and parameters come from the file.

        ``device``: ``'auto'`` (the GPU when FAISS has one, see :mod:`falco.bank.gpu`), ``'cpu'`` or ``'cuda'``."""
        path, device = Path(path), search_device(device)[0] if device == "auto" else device
        if not path.is_file():
            raise InputError(f"path: no index file at {str(path)!r}")
        try:
            index = faiss.read_index(str(path))  # already of the concrete type, and owning
        except RuntimeError as exc:
            raise InputError(f"path: {str(path)!r} is not a FAISS index ({exc})") from exc
        metric: Metric = "cosine" if index.metric_type == faiss.METRIC_INNER_PRODUCT else "l2"
        if isinstance(index, faiss.IndexFlat):
            return cls(index, metric, "flat", {}, device)
        if isinstance(index, faiss.IndexIVFFlat):
            return cls(
                index,
                metric,
                "ivf",
                {"nlist": int(index.nlist), "nprobe": int(index.nprobe)},
                device,
            )
        if isinstance(index, faiss.IndexHNSWFlat):
            h = index.hnsw
            params = {
                "M": int(h.nb_neighbors(1)),
                "efConstruction": int(h.efConstruction),
                "efSearch": int(h.efSearch),
            }
            return cls(index, metric, "hnsw", params, device)
        raise InputError(
            f"path: {str(path)!r} holds a {type(index).__name__}, not a flat, IVF or HNSW index"
        )


def _flat(base: np.ndarray, metric: Metric) -> Any:
    index = (
        faiss.IndexFlatIP(base.shape[1]) if metric == "cosine" else faiss.IndexFlatL2(base.shape[1])
    )
    index.add(base)
    return index


def _powers_of_two(limit: int) -> list[int]:
    out, v = [], 1
    while v < limit:
        out.append(v)
        v *= 2
    return out + [limit]


def _calibrate(
    index: Any,
    knob: str,
    grid: list[int],
    base: np.ndarray,
    q: np.ndarray,
    metric: Metric,
    target: float,
) -> tuple[int, float]:
    """Smallest value of ``knob`` in ``grid`` whose recall@1 on ``q`` reaches ``target``.

    "Reaches" means the measured recall is at least two standard errors above ``target``
    (0.964 for 0.95 on 1000 queries), so that the recall on new queries is >= target.

    Returns the last value of ``grid`` and its recall when none does. A hit is a result at
    least as close as the exact nearest neighbour in ``base`` (so ties count).

    Shape:
        base: [N, D] (what ``index`` holds); q: [C, D]
    """
    # Aim above the target by two standard errors of the sample's recall estimate.
    need = min(1.0, target + 2.0 * np.sqrt(target * (1.0 - target) / len(q)))
    raw, _ = faiss.knn(q, base, 1, metric=_faiss_metric(metric))
    truth = raw[:, 0].astype(np.float64)
    tol = 1e-5 * np.maximum(1.0, np.abs(truth))
    recall = 0.0
    for value in grid:
        if knob == "nprobe":
            index.nprobe = value
        else:
            index.hnsw.efSearch = value
        r2, l2 = index.search(q, 1)
        got = r2[:, 0].astype(np.float64)
        hit = (l2[:, 0] >= 0) & (
            (got >= truth - tol) if metric == "cosine" else (got <= truth + tol)
        )
        recall = float(np.mean(hit))
        if recall >= need:
            return value, recall
    return grid[-1], recall
