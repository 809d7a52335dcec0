"""Benchmark falco.bank.index and falco.bank.pairing against scikit-learn's brute-force search.

For each bank size and data kind (512-d float32, cosine metric) it prints:

* FAISS exact search time (``falco.bank.index.exact_search``) for all queries;
* the ``kind='auto'`` index: build time (k-means + add + nprobe calibration), search time,
  recall@1 against exact, and what it chose (IVF, or exact when IVF cannot reach the target);
* an IVF nprobe sweep on a subset of queries (recall@1 and time per 10^4 queries);
* pairing without reuse (global greedy) through that index, for all queries, and for a batch
  of ``--batch`` queries with 10% and 50% of the bank already taken (FALCO's ``--no-reuse``);
* scikit-learn ``NearestNeighbors(algorithm='brute', metric='cosine')`` on the same bank,
  timed on ``--sklearn-queries`` queries passed in chunks and extrapolated linearly to all
  queries (said so in the output), and the speed-up ratios.

It ends with a summary table; ``scripts/README.md`` records one run.

Data: ``random`` = i.i.d. Gaussian vectors (a worst case for approximate search);
``clustered`` = unit vectors from a mixture of 1,000 Gaussians, each spread over its own
32-d subspace plus isotropic noise, cluster centres at cosine ~0.5 from one another (a
stand-in for face features). Queries are fresh draws from the same distribution.

Usage:
    python scripts/bench_search.py --sizes 100000 1000000 --queries 10000
"""

from __future__ import annotations

import argparse
import os
import platform
import time
import warnings

import faiss
import numpy as np

from falco.bank.index import FeatureIndex, exact_search
from falco.bank.pairing import pair_without_reuse


def normalize(x: np.ndarray) -> np.ndarray:
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def random_data(sizes: list[int], d: int, seed: int) -> list[np.ndarray]:
    """i.i.d. standard Gaussian vectors."""
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((n, d), dtype=np.float32) for n in sizes]


def clustered_data(
    sizes: list[int],
    d: int,
    seed: int,
    n_clusters: int = 1000,
    rank: int = 32,
    spread: float = 1.0,
    noise: float = 0.3,
) -> list[np.ndarray]:
    """Unit vectors from a mixture of low-rank Gaussians around correlated centres."""
    rng = np.random.default_rng(seed)
    common = normalize(rng.standard_normal((1, d), dtype=np.float32))
    centres = normalize(common + normalize(rng.standard_normal((n_clusters, d), dtype=np.float32)))
    bases = rng.standard_normal((n_clusters, rank, d), dtype=np.float32) / np.float32(np.sqrt(d))
    out = []
    for n in sizes:
        x = rng.standard_normal((n, d), dtype=np.float32) * np.float32(noise / np.sqrt(d))
        labels = rng.integers(0, n_clusters, n)
        order = np.argsort(labels, kind="stable")
        bounds = np.concatenate([[0], np.cumsum(np.bincount(labels, minlength=n_clusters))])
        for j in range(n_clusters):
            idx = order[bounds[j] : bounds[j + 1]]
            z = rng.standard_normal((len(idx), rank), dtype=np.float32) * np.float32(
                spread / np.sqrt(rank)
            )
            x[idx] += centres[j] + z @ bases[j]
        out.append(normalize(x))
    return out


def recall_at_1(idx: np.ndarray, dist: np.ndarray, true_dist: np.ndarray) -> float:
    """Share of queries whose result is as close as the exact neighbour (ties count)."""
    return float(np.mean((idx[:, 0] >= 0) & (dist[:, 0] <= true_dist[:, 0] + 1e-6)))


def timed(fn, *args, **kwargs):
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t


def sklearn_time(
    bank: np.ndarray, queries: np.ndarray, chunk: int
) -> tuple[float, float, np.ndarray]:
    """Fit + kneighbors (in chunks of ``chunk`` queries); returns (fit s, search s, indices)."""
    from sklearn.neighbors import NearestNeighbors

    nn, t_fit = timed(NearestNeighbors(n_neighbors=1, algorithm="brute", metric="cosine").fit, bank)
    t = time.perf_counter()
    idx = np.concatenate(
        [
            nn.kneighbors(queries[s : s + chunk], return_distance=False)
            for s in range(0, len(queries), chunk)
        ]
    )
    return t_fit, time.perf_counter() - t, idx


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--queries", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument(
        "--data", nargs="+", default=["random", "clustered"], choices=["random", "clustered"]
    )
    ap.add_argument(
        "--sklearn-queries",
        type=int,
        default=1000,
        help="queries timed with scikit-learn (extrapolated linearly to --queries)",
    )
    ap.add_argument("--sklearn-chunk", type=int, default=250, help="queries per kneighbors call")
    ap.add_argument("--sweep-queries", type=int, default=1000, help="queries for the nprobe sweep")
    ap.add_argument(
        "--hnsw-max",
        type=int,
        default=0,
        help="also build an HNSW index for banks up to this size (slow to build; 0 = never)",
    )
    ap.add_argument(
        "--hnsw-data",
        nargs="+",
        default=["clustered"],
        choices=["random", "clustered"],
        help="data kinds for HNSW (on random data it needs efSearch >= 2048: very slow)",
    )
    ap.add_argument("--batch", type=int, default=8, help="queries per pairing with taken fakes")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    print(f"# falco.bank.index benchmark: dim {args.dim}, {args.queries} queries, metric cosine")
    print(
        f"# faiss {faiss.__version__}, omp threads {faiss.omp_get_max_threads()}, cpus {os.cpu_count()}, "
        f"{platform.processor() or platform.machine()}, load average at start {os.getloadavg()[0]:.1f}"
    )
    summary = []
    for n in args.sizes:
        sk = None
        for kind in args.data:
            gen = random_data if kind == "random" else clustered_data
            (bank, queries), t_gen = timed(gen, [n, args.queries], args.dim, args.seed + n)
            print(
                f"\n## bank {n:,} x {args.dim} ({kind}), {len(queries):,} queries (generated in {t_gen:.1f} s)"
            )

            (ti, td), t_exact = timed(exact_search, bank, queries, k=1, metric="cosine")
            print(
                f"faiss exact (IndexFlatIP + float64 re-rank): {t_exact:8.2f} s   mean NN cosine {1 - td.mean():.3f}"
            )

            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                fi, t_build = timed(FeatureIndex.build, bank, "cosine", "auto", seed=args.seed)
            fell_back = fi.kind == "flat"
            for w in caught:
                print(f"  (auto) {w.message}")
            row = {"n": n, "data": kind, "exact": t_exact, "auto": fi.kind, "build": t_build}
            if fell_back:
                print(f"auto index: exact (flat) chosen, build {t_build:.2f} s")
                ivf, t_ivf = timed(
                    FeatureIndex.build, bank, "cosine", "ivf", nprobe=1, seed=args.seed
                )
                print(f"  IVF for the sweep: nlist {ivf.params['nlist']}, built in {t_ivf:.1f} s")
                row.update(search=None, recall=None)
            else:
                (ai, ad), t_search = timed(fi.search, queries, 1)
                rec = recall_at_1(ai, ad, td)
                print(f"auto index: {fi.kind} {fi.params}")
                print(
                    f"  build (train + add + calibrate) {t_build:8.2f} s   search {t_search:8.2f} s   recall@1 {rec:.4f}"
                )
                ivf = fi
                row.update(search=t_search, recall=rec, params=dict(fi.params))
                (pi, pd), t_pair = timed(
                    pair_without_reuse, fi, queries, k=8, return_distances=True
                )
                print(
                    f"  pair_without_reuse (greedy, k=8) {t_pair:8.2f} s   unique {len(np.unique(pi)) == len(pi)}   "
                    f"mean distance {pd.mean():.4f} vs plain NN {ad[:, 0].mean():.4f}   "
                    f"queries not given their NN {np.mean(pi != ai[:, 0]):.3f}"
                )
                row["pair"] = t_pair
            rng = np.random.default_rng(args.seed)
            for share in (0.1, 0.5):  # FALCO --no-reuse: one batch, part of the bank given out
                taken = rng.choice(n, int(share * n), replace=False)
                _, t_taken = timed(pair_without_reuse, fi, queries[: args.batch], k=8, taken=taken)
                print(
                    f"  pair_without_reuse ({fi.kind}), {args.batch} queries, {share:.0%} of the bank "
                    f"taken: {t_taken:8.3f} s"
                )

            m = min(args.sweep_queries, len(queries))
            sweep = []
            for nprobe in (1, 4, 16, 64):
                if nprobe > ivf.params["nlist"]:
                    break
                ivf.set_params(nprobe=nprobe)
                (si, sd), ts = timed(ivf.search, queries[:m], 1)
                sweep.append(
                    f"nprobe {nprobe}: recall@1 {recall_at_1(si, sd, td[:m]):.3f}, {ts * len(queries) / m:.1f} s/{len(queries)} q"
                )
            print(f"  IVF sweep on {m} queries (time extrapolated): " + "; ".join(sweep))
            del ivf, fi

            if n <= args.hnsw_max and kind in args.hnsw_data:
                h, t_h = timed(FeatureIndex.build, bank, "cosine", "hnsw", seed=args.seed)
                (hi, hd), t_hs = timed(h.search, queries, 1)
                print(
                    f"  HNSW {h.params}: build {t_h:.1f} s, search {t_hs:.2f} s, recall@1 {recall_at_1(hi, hd, td):.4f}"
                )
                row["hnsw"] = (t_h, t_hs, recall_at_1(hi, hd, td))
                del h

            if sk is None:  # brute-force time does not depend on the data: once per size
                m = min(args.sklearn_queries, len(queries))
                t_fit, t_sk, sk_idx = sklearn_time(bank, queries[:m], args.sklearn_chunk)
                agree = np.mean(sk_idx[:, 0] == ti[:m, 0])
                sk = t_fit + t_sk * len(queries) / m
                how = (
                    "all queries"
                    if m == len(queries)
                    else f"{m} queries, extrapolated linearly to {len(queries)}"
                )
                print(
                    f"sklearn NearestNeighbors(brute, cosine): fit {t_fit:.2f} s + search {t_sk:.2f} s on {how} "
                    f"(chunks of {args.sklearn_chunk}) -> {sk:8.2f} s; same NN as faiss exact: {agree:.4f}"
                )
            row["sklearn"] = sk
            print(
                f"ratios vs sklearn: faiss exact {sk / t_exact:5.1f}x"
                + (
                    ""
                    if row["search"] is None
                    else f", {fi_kind(row)} search {sk / row['search']:5.1f}x, {fi_kind(row)} build+search {sk / (row['build'] + row['search']):5.1f}x"
                )
            )
            summary.append(row)
            del bank, queries

    print("\n## summary (seconds for all queries; sklearn extrapolated where noted above)")
    print(
        f"{'bank':>9} {'data':>9} {'sklearn':>8} {'exact':>7} {'auto':>5} {'build':>7} {'search':>7} {'recall@1':>8} {'x exact':>7} {'x search':>8} {'x b+s':>6}"
    )
    for r in summary:
        s, b = r["search"], r["build"]
        print(
            f"{r['n']:>9,} {r['data']:>9} {r['sklearn']:8.1f} {r['exact']:7.1f} {r['auto']:>5} {b:7.1f} "
            + (
                f"{s:7.2f} {r['recall']:8.4f} {r['sklearn'] / r['exact']:7.1f} {r['sklearn'] / s:8.1f} {r['sklearn'] / (b + s):6.1f}"
                if s is not None
                else f"{'-':>7} {'1 (exact)':>8} {r['sklearn'] / r['exact']:7.1f} {'-':>8} {'-':>6}"
            )
        )
    print(
        f"# load average at end {os.getloadavg()[0]:.1f} (the machine may be shared: times are wall clock)"
    )


def fi_kind(row: dict) -> str:
    return row["auto"]


if __name__ == "__main__":
    main()
