"""Pairing real faces with fakes without reuse: each fake goes to at most one face.

Pairing without reuse (:func:`pair_without_reuse`) keeps a dataset from collapsing onto a few
popular fakes. Default ``method='greedy'`` is the *global greedy* matching: all
(distance, query, fake) triples in ascending lexicographic order, a triple is taken when both
its query and its fake are free. It is computed from top-k candidate lists; when a
still-unmatched query reaches the end of its list the pass stops there, that query's list
(and those of other queries about to run out) is searched again with k doubled, and the pass
resumes, so the result is exactly the global greedy over the full Q x N distance matrix,
deterministic, in O(Q k log(Q k)) plus the searches. Past ``_KMAX`` candidates a list is not
widened further: the queries left are matched by the same greedy over the free fakes alone
(exact search on their vectors).

``method='hungarian'`` solves the minimum-total-distance assignment exactly with
``scipy.optimize.linear_sum_assignment`` on the dense Q x N matrix (small problems only,
Q * N <= ``HUNGARIAN_MAX_CELLS``). Greedy is the default: it scales to 10^6 fakes, and it keeps a
query's clearly best fake for it, whereas the minimum total may trade one face's close match
for several slightly better ones.

Taken fakes. ``taken`` lists bank indices that are not free (given out by an earlier batch or
an earlier run): both methods solve the same problem on the free fakes only, so the greedy
result equals the global greedy over the Q x (N - |taken|) matrix of the free fakes. A few
taken fakes lengthen the first candidate lists by their count; when that would pass
``_KMAX``, the search starts on the free fakes directly.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, Literal

import faiss
import numpy as np

from falco.bank.index import (
    FeatureIndex,
    Metric,
    _exact_knn,
    _prepare,
    _raw_to_distance,
    check_metric,
)
from falco.errors import InputError

__all__ = ["HUNGARIAN_MAX_CELLS", "pair_without_reuse", "taken_mask"]

HUNGARIAN_MAX_CELLS = 20_000_000
_KMAX = 1024  # past this list length, the rest is solved on the free fakes alone


def taken_mask(taken: Collection[int] | None, n: int) -> np.ndarray:
    """Boolean mask [n] of the taken bank indices, or InputError for non-integers or out of range."""
    used = np.zeros(n, bool)
    if taken is None:
        return used
    arr = np.asarray(taken if isinstance(taken, np.ndarray) else list(taken)).reshape(-1)
    if arr.size == 0:
        return used
    if not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"taken: expected bank indices (integers), got dtype {arr.dtype}")
    bad = arr[(arr < 0) | (arr >= n)]
    if bad.size:
        raise InputError(
            f"taken: bank indices must be in [0, {n}) (the bank size), got {int(bad[0])}"
        )
    used[arr] = True
    return used


def _dense_distances(base: np.ndarray, q: np.ndarray, metric: Metric) -> np.ndarray:
    """All query-to-bank distances in float64.

    Shape:
        base: [N, D]; q: [Q, D] -> [Q, N]
    """
    b, qq = base.astype(np.float64), q.astype(np.float64)
    if metric == "cosine":
        b /= np.linalg.norm(b, axis=1, keepdims=True)
        qq /= np.linalg.norm(qq, axis=1, keepdims=True)
        return 1.0 - qq @ b.T
    sq = (qq**2).sum(1)[:, None] + (b**2).sum(1)[None, :] - 2.0 * qq @ b.T
    return np.sqrt(np.maximum(sq, 0.0))


def _bank_vectors(fi: FeatureIndex) -> np.ndarray:
    """The stored (prepared) vectors of an index, as an [N, D] array."""
    if fi.kind == "flat":
        return fi._stored()
    index = fi._cpu_index
    if fi.kind == "ivf":
        faiss.extract_index_ivf(index).make_direct_map()
    return index.reconstruct_n(0, fi.ntotal)


class _Searcher:
    """Top-k over a subset of the bank (all of it, or the free fakes), global ids out."""

    def __init__(
        self,
        fi: FeatureIndex | None,
        base: np.ndarray | None,
        ids: np.ndarray | None,
        metric: Metric,
    ) -> None:
        self.fi, self.base, self.ids, self.metric = fi, base, ids, metric
        self.n = fi.ntotal if fi is not None else base.shape[0]

    def __call__(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self.fi is not None:
            if self.fi.kind == "flat":
                idx, dist = _exact_knn(
                    self.fi._stored(), q, k, self.metric, searcher=self.fi.index.search
                )
            else:
                raw, idx = self.fi.index.search(q, k)
                dist = _raw_to_distance(raw, self.metric)
                dist[idx < 0] = np.inf
                order = np.lexsort((idx, dist), axis=-1)
                idx, dist = np.take_along_axis(idx, order, 1), np.take_along_axis(dist, order, 1)
        else:
            idx, dist = _exact_knn(self.base, q, k, self.metric)
        if self.ids is not None:
            idx = np.where(idx >= 0, self.ids[np.maximum(idx, 0)], -1)
        return idx.astype(np.int64), dist


def _greedy(
    searcher: _Searcher,
    q: np.ndarray,
    qids: np.ndarray,
    out: np.ndarray,
    out_d: np.ndarray,
    used: np.ndarray,
    k0: int,
) -> np.ndarray:
    """Global greedy of the queries ``qids`` over ``searcher``'s bank; returns the unmatched.

    Processes (distance, query, fake) triples in order from each query's top-k list, skipping
    fakes already ``used``; stops a pass when an unmatched query passes the end of an
    incomplete list, widens the lists of the queries at risk, and goes on. Returns queries
    still unmatched when a list would exceed ``_KMAX`` (the caller solves them on the free
    fakes), as ids of ``qids``.
    """
    n = searcher.n
    kq = np.full(len(qids), min(k0, n))
    lists_i, lists_d = {}, {}

    def fetch(rows: np.ndarray) -> None:
        for kc in np.unique(kq[rows]):
            sub = rows[kq[rows] == kc]
            idx, dist = searcher(q[sub], int(kc))
            for r, ii, dd in zip(sub, idx, dist):
                keep = ii >= 0
                lists_i[r], lists_d[r] = ii[keep], dd[keep]

    active = np.arange(len(qids))
    fetch(active)
    while len(active):
        counts = np.array([len(lists_i[r]) for r in active])
        t_q = np.repeat(active, counts)
        t_i = (
            np.concatenate([lists_i[r] for r in active]) if counts.sum() else np.empty(0, np.int64)
        )
        t_d = (
            np.concatenate([lists_d[r] for r in active])
            if counts.sum()
            else np.empty(0, np.float32)
        )
        last = np.zeros(len(t_q), bool)
        last[np.cumsum(counts)[counts > 0] - 1] = True
        complete = dict(zip(active.tolist(), (kq[active] >= n).tolist()))
        order = np.lexsort((t_i, qids[t_q], t_d))
        matched = np.zeros(len(qids), bool)
        stop = None
        # plain Python lists: this loop is sequential by nature
        tq, ti, tl, done = t_q[order].tolist(), t_i[order].tolist(), last[order].tolist(), set()
        for j, (r, f) in enumerate(zip(tq, ti)):
            if r in done:
                continue
            if not used[f]:
                used[f] = True
                done.add(r)
                out[qids[r]], out_d[qids[r]] = f, t_d[order[j]]
            elif tl[j] and not complete[r]:
                stop = r
                break
        matched[list(done)] = True
        for r in active[counts == 0]:  # an approximate index returned nothing for it
            if not complete[int(r)]:
                stop = int(r) if stop is None else stop
        active = active[~matched[active]]
        if stop is None:
            break
        # Widen the lists of the queries about to run out (this one included).
        free_left = np.array([np.count_nonzero(~used[lists_i[r]]) for r in active])
        risk = active[(free_left <= np.maximum(1, kq[active] // 2)) | (active == stop)]
        if (kq[risk] * 2 > _KMAX).any() and min(2 * int(kq[risk].max()), n) < n:
            return qids[active]
        kq[risk] = np.minimum(kq[risk] * 2, n)
        fetch(risk)
    return qids[active]  # empty, or unmatched by an approximate index's complete lists


def _pair_greedy(
    fi: FeatureIndex | None,
    base: np.ndarray | None,
    q: np.ndarray,
    metric: Metric,
    used: np.ndarray,
    k: int,
    out: np.ndarray,
    out_d: np.ndarray,
) -> None:
    """Fill ``out``/``out_d`` with the global greedy over the fakes not ``used`` (marking them)."""
    n_taken = int(used.sum())
    left = np.arange(len(q))
    if n_taken == 0 or n_taken + k <= _KMAX:  # first lists hold at least k free fakes each
        left = _greedy(_Searcher(fi, base, None, metric), q, left, out, out_d, used, k + n_taken)
    vec = None
    while len(left):  # lists got too long: go on over the free fakes only, exactly
        if vec is None:
            vec = base if fi is None else _bank_vectors(fi)
        free = np.flatnonzero(~used)
        sub = _Searcher(None, vec[free], free, metric)
        rest = _greedy(sub, q[left], left, out, out_d, used, k)
        assert len(rest) < len(left), "greedy pairing made no progress"
        left = rest


def _pair_hungarian(
    fi: FeatureIndex | None,
    base: np.ndarray | None,
    q: np.ndarray,
    metric: Metric,
    used: np.ndarray,
    out: np.ndarray,
    out_d: np.ndarray,
) -> None:
    """Fill ``out``/``out_d`` with the minimum-total-distance assignment onto the free fakes."""
    from scipy.optimize import linear_sum_assignment

    free = np.flatnonzero(~used)
    if len(q) * len(free) > HUNGARIAN_MAX_CELLS:
        raise InputError(
            f"method: 'hungarian' needs a dense {len(q)} x {len(free)} matrix (> {HUNGARIAN_MAX_CELLS} cells); use 'greedy'"
        )
    vec = base if fi is None else _bank_vectors(fi)
    cost = _dense_distances(vec if len(free) == len(vec) else vec[free], q, metric)
    rows, cols = linear_sum_assignment(cost)
    out[rows], out_d[rows] = free[cols], cost[rows, cols].astype(np.float32)


def pair_without_reuse(
    bank: FeatureIndex | Any,
    queries: Any,
    *,
    k: int = 8,
    metric: Metric | None = None,
    method: Literal["greedy", "hungarian"] = "greedy",
    taken: Collection[int] | None = None,
    return_distances: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Pair each query with a different free bank vector (each fake used at most once).

    ``method='greedy'`` (default) is the exact global greedy matching described in the module
    notes (ascending (distance, query, fake), deterministic), computed from top-``k`` lists
    widened on demand; with an approximate index, the lists come from that index.
    ``method='hungarian'`` minimises the total distance (scipy ``linear_sum_assignment`` on
    the dense matrix; at most ``HUNGARIAN_MAX_CELLS`` query x free-fake cells).

    Args:
        bank: a :class:`FeatureIndex`, or bank features (numpy or torch; exact search).
        queries: the real faces' features.
        k: initial candidates per query (widened when they run out).
        metric: 'cosine' or 'l2'; for a FeatureIndex, None or its own metric
            (default for features: 'cosine').
        method: 'greedy' or 'hungarian'.
        taken: bank indices no query may get (e.g. given out earlier); None: all are free.
        return_distances: also return each query's distance to its fake.

    Returns:
        indices into the bank, all different and none in ``taken``; with
        ``return_distances``, (indices, distances).

    Raises:
        InputError: bad arguments, or more queries than free bank vectors.

    Shape:
        bank: [N, D]; queries: [Q, D] with Q <= N - |taken| -> indices int64 [Q]
        (distances float32 [Q])
    """
    if isinstance(bank, FeatureIndex):
        if metric is not None and check_metric(metric) != bank.metric:
            raise InputError(f"metric: the index uses {bank.metric!r}, got {metric!r}")
        metric, fi, base = bank.metric, bank, None
        n, d = bank.ntotal, bank.dim
    else:
        metric = check_metric("cosine" if metric is None else metric)
        fi, base = None, _prepare(bank, "bank", metric)
        n, d = base.shape
    if method not in ("greedy", "hungarian"):
        raise InputError(f"method: expected 'greedy' or 'hungarian', got {method!r}")
    q = _prepare(queries, "queries", metric, dim=d)
    used = taken_mask(taken, n)
    n_free = n - int(used.sum())
    if len(q) > n_free:
        if n_free == n:
            raise InputError(
                f"queries: {len(q)} queries but only {n} bank vectors; pairing without reuse needs Q <= N"
            )
        raise InputError(
            f"queries: {len(q)} queries but only {n_free} free bank vectors ({n} in the bank, "
            f"{n - n_free} taken); pairing without reuse needs one free vector per query"
        )
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InputError(f"k: expected an integer >= 1, got {k!r}")

    out = np.full(len(q), -1, np.int64)
    out_d = np.full(len(q), np.inf, np.float32)
    if method == "hungarian":
        _pair_hungarian(fi, base, q, metric, used, out, out_d)
    else:
        _pair_greedy(fi, base, q, metric, used, int(k), out, out_d)
    if metric == "cosine":
        np.clip(out_d, 0.0, 2.0, out=out_d)
    assert (out >= 0).all() and len(np.unique(out)) == len(out)
    return (out, out_d) if return_distances else out
