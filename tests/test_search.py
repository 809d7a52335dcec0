"""Tests for falco.bank.index and falco.bank.pairing: exact search, FeatureIndex kinds, pairing
without reuse (taken fakes included), validation."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from falco.errors import InputError
from falco.bank.index import FeatureIndex, exact_search
from falco.bank.pairing import pair_without_reuse


def brute(bank: np.ndarray, queries: np.ndarray, metric: str) -> np.ndarray:
    """float64 numpy distance matrix [Q, N]."""
    b, q = bank.astype(np.float64), queries.astype(np.float64)
    if metric == "cosine":
        b = b / np.linalg.norm(b, axis=1, keepdims=True)
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        return 1.0 - q @ b.T
    return np.sqrt(((q[:, None, :] - b[None]) ** 2).sum(-1))


def clustered(
    n: int, d: int = 64, n_clusters: int = 50, seed: int = 0, rank: int = 8
) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, d))
    bases = rng.standard_normal((n_clusters, rank, d)) / np.sqrt(rank)
    lab = rng.integers(0, n_clusters, n)
    x = centres[lab] + np.einsum("nr,nrd->nd", rng.standard_normal((n, rank)) * 0.5, bases[lab])
    x += 0.1 * rng.standard_normal((n, d))
    return x.astype(np.float32)


@pytest.fixture(scope="module")
def rand_data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    return rng.standard_normal((2000, 48)).astype(np.float32), rng.standard_normal(
        (300, 48)
    ).astype(np.float32)


# ----------------------------------------------------------------------------- exact


@pytest.mark.parametrize("metric", ["cosine", "l2"])
@pytest.mark.parametrize("k", [1, 7])
def test_exact_matches_numpy(rand_data, metric, k):
    bank, queries = rand_data
    idx, dist = exact_search(bank, queries, k=k, metric=metric)
    full = brute(bank, queries, metric)
    ref = np.argsort(full, axis=1, kind="stable")[:, :k]
    assert (
        idx.dtype == np.int64
        and dist.dtype == np.float32
        and idx.shape == dist.shape == (len(queries), k)
    )
    np.testing.assert_array_equal(idx, ref)
    np.testing.assert_allclose(dist, np.take_along_axis(full, ref, 1), rtol=1e-6, atol=1e-6)


def test_l2_is_euclidean_not_squared():
    bank = np.array([[0.0, 0.0], [3.0, 4.0]], np.float32)
    idx, dist = exact_search(bank, np.array([[0.0, 0.0]], np.float32), k=2, metric="l2")
    assert idx.tolist() == [[0, 1]]
    np.testing.assert_allclose(dist, [[0.0, 5.0]])
    idx, dist = exact_search(
        np.array([[0.0, 1.0], [3.0, 4.0]]), np.array([[1.0, 0.0]]), k=2, metric="cosine"
    )
    assert idx.tolist() == [[1, 0]]
    np.testing.assert_allclose(dist, [[0.4, 1.0]], atol=1e-6)  # 1 - cos of the normalised vectors


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_ties_go_to_lowest_index(rand_data, metric):
    bank = rand_data[0].copy()
    dup = [3, 40, 700, 1999]
    bank[dup] = bank[1234]
    q = np.repeat(bank[[1234]], 25, axis=0)  # many queries: FAISS's BLAS path
    for k in (1, 2, 3, 5):
        idx, dist = exact_search(bank, q, k=k, metric=metric)
        assert (idx == np.array(sorted(dup + [1234])[:k])).all()
        assert np.all(dist == 0)
    # 11 copies, k=4: ties beyond FAISS's spare candidates are searched again, wider
    bank[100:110] = bank[50]
    idx, _ = exact_search(bank, bank[[50]], k=4, metric=metric)
    assert idx.tolist() == [[50, 100, 101, 102]]


def test_accepts_torch_and_k_equal_n():
    torch = pytest.importorskip("torch")
    bank = torch.randn(20, 8, dtype=torch.float64)
    idx, _ = exact_search(bank, bank[:3], k=20)
    assert idx.shape == (3, 20) and sorted(idx[0].tolist()) == list(range(20))
    assert idx[:, 0].tolist() == [0, 1, 2]


# ----------------------------------------------------------------------------- index


@pytest.mark.parametrize("metric", ["cosine", "l2"])
@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_index_round_trip(tmp_path, metric, kind):
    data = clustered(4000, seed=2)
    bank, queries = data[:3600], data[3600:]
    fi = FeatureIndex.build(bank, metric, kind, seed=0)
    assert fi.ntotal == 3600 and fi.dim == 64 and fi.metric == metric and fi.kind == kind
    idx, dist = fi.search(queries, k=3)
    ex_i, ex_d = exact_search(bank, queries, k=3, metric=metric)
    recall = np.mean(dist[:, 0] <= ex_d[:, 0] + 1e-5)
    if kind == "flat":
        np.testing.assert_array_equal(idx, ex_i)
        np.testing.assert_array_equal(dist, ex_d)
    else:
        knob = "nprobe" if kind == "ivf" else "efSearch"
        assert knob in fi.params and fi.params["calibrated_recall"] >= 0.95
        assert recall >= 0.9, recall
    path = tmp_path / "sub" / f"{kind}.faiss"
    fi.save(path)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left
    back = FeatureIndex.load(path)
    assert (
        back.kind,
        back.metric,
        back.ntotal,
        back.params.get("nprobe"),
        back.params.get("efSearch"),
    ) == (kind, metric, 3600, fi.params.get("nprobe"), fi.params.get("efSearch"))
    i2, d2 = back.search(queries, k=3)
    np.testing.assert_array_equal(i2, idx)
    np.testing.assert_allclose(d2, dist)


def test_auto_kind_and_fixed_params():
    bank = clustered(2000, seed=3)
    assert FeatureIndex.build(bank, kind="auto").kind == "flat"  # small bank: exact
    fi = FeatureIndex.build(bank, kind="ivf", nlist=16, nprobe=16)
    assert fi.params == {"nlist": 16, "nprobe": 16}
    idx, _ = fi.search(bank[:50], k=1)  # all lists probed: exact
    assert idx[:, 0].tolist() == list(range(50))
    fi.set_params(nprobe=2)
    assert fi.index.nprobe == 2
    with pytest.raises(InputError, match="efSearch"):
        fi.set_params(efSearch=10)


def test_auto_is_exact_at_the_papers_bank_size(monkeypatch):
    """kind='auto' keeps exact search up to AUTO_FLAT_MAX (>= 250,000) vectors: a bank of the
    paper's 60,000 fakes is flat; only past the threshold does 'auto' try IVF."""
    import warnings

    from falco.bank import index as index_mod

    assert index_mod.AUTO_FLAT_MAX >= 250_000
    fakes = np.random.default_rng(0).standard_normal((60_000, 8)).astype(np.float32)
    fi = FeatureIndex.build(fakes, kind="auto")
    assert fi.kind == "flat" and fi.params == {}
    monkeypatch.setattr(index_mod, "AUTO_FLAT_MAX", 2000)
    bank = clustered(2001, seed=4)
    assert FeatureIndex.build(bank[:2000], kind="auto").kind == "flat"  # up to and including the threshold
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fi = FeatureIndex.build(bank, kind="auto")
    assert fi.kind == "ivf" or any("using exact search instead" in str(w.message) for w in caught)


def test_cuda_request_falls_back_to_cpu(rand_data):
    import faiss

    if hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
        pytest.skip("FAISS sees a GPU here")
    with pytest.warns(UserWarning, match="GPU"):
        fi = FeatureIndex.build(rand_data[0], device="cuda")
    assert fi.device == "cpu" and fi.search(rand_data[1][:2])[0].shape == (2, 1)


# ----------------------------------------------------------------------------- pairing


def full_greedy(dist: np.ndarray) -> np.ndarray:
    """Reference global greedy over the whole matrix: (distance, query, fake) ascending."""
    q, n = dist.shape
    qi, fi = np.meshgrid(np.arange(q), np.arange(n), indexing="ij")
    order = np.lexsort((fi.ravel(), qi.ravel(), dist.ravel()))
    out, used = np.full(q, -1), np.zeros(n, bool)
    for j in order:
        a, b = qi.ravel()[j], fi.ravel()[j]
        if out[a] < 0 and not used[b]:
            out[a], used[b] = b, True
    return out


def test_pairing_equals_nn_without_collisions(rand_data):
    bank, queries = rand_data
    nn = exact_search(bank, queries[:20])[0][:, 0]
    assert len(np.unique(nn)) == 20
    np.testing.assert_array_equal(pair_without_reuse(bank, queries[:20]), nn)


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_pairing_is_exact_global_greedy(metric):
    # a few fakes attract every query: many collisions, lists widened several times
    rng = np.random.default_rng(5)
    bank = rng.standard_normal((400, 16)).astype(np.float32)
    bank[:4] *= 0.05
    bank[:4] += 3.0
    queries = (3.0 + rng.standard_normal((150, 16))).astype(np.float32)
    idx, d = pair_without_reuse(bank, queries, k=1, metric=metric, return_distances=True)
    assert len(np.unique(idx)) == len(idx)
    _, full_d = exact_search(bank, queries, k=400, metric=metric)
    full_i, _ = exact_search(bank, queries, k=400, metric=metric)
    dense = np.empty((150, 400), np.float32)
    np.put_along_axis(dense, full_i, full_d, 1)
    np.testing.assert_array_equal(idx, full_greedy(dense))
    np.testing.assert_allclose(d, dense[np.arange(150), idx], rtol=1e-6)
    # Q == N: every fake used
    assert sorted(pair_without_reuse(bank[:150], queries, k=2, metric=metric).tolist()) == list(
        range(150)
    )


def test_pairing_through_an_index_and_long_lists(monkeypatch):
    from falco.bank import pairing

    bank = clustered(1500, seed=6)
    queries = np.repeat(bank[:5], 40, axis=0) + 0.01 * np.random.default_rng(0).standard_normal(
        (200, 64)
    ).astype(np.float32)
    ref = pair_without_reuse(bank, queries, k=4)
    monkeypatch.setattr(pairing, "_KMAX", 8)  # force the fallback onto the free fakes
    np.testing.assert_array_equal(pair_without_reuse(bank, queries, k=4), ref)
    np.testing.assert_array_equal(pair_without_reuse(FeatureIndex.build(bank), queries, k=4), ref)
    ivf = FeatureIndex.build(bank, kind="ivf", nlist=16, nprobe=2)
    got = pair_without_reuse(ivf, queries, k=4)
    assert len(np.unique(got)) == len(got)


def test_pairing_beats_naive_and_hungarian_is_optimal():
    rng = np.random.default_rng(7)
    totals = {"greedy": 0.0, "naive": 0.0, "hungarian": 0.0}
    for trial in range(5):
        bank = rng.standard_normal((7, 4)).astype(np.float32)
        queries = rng.standard_normal((5, 4)).astype(np.float32)
        dense = brute(bank, queries, "l2")
        g = pair_without_reuse(bank, queries, metric="l2", k=1)
        h = pair_without_reuse(bank, queries, metric="l2", method="hungarian")
        best = min(dense[np.arange(5), list(p)].sum() for p in itertools.permutations(range(7), 5))
        assert dense[np.arange(5), h].sum() == pytest.approx(best)
        assert dense[np.arange(5), g].sum() >= best - 1e-9
        used, naive = set(), []
        for row in dense:  # query order decides: each takes its nearest still-free fake
            f = next(int(j) for j in np.argsort(row) if j not in used)
            used.add(f)
            naive.append(f)
        totals["greedy"] += dense[np.arange(5), g].sum()
        totals["naive"] += dense[np.arange(5), naive].sum()
        totals["hungarian"] += dense[np.arange(5), h].sum()
    assert totals["hungarian"] <= totals["greedy"] < totals["naive"]


def free_greedy(bank: np.ndarray, queries: np.ndarray, taken: set[int], metric: str) -> np.ndarray:
    """Reference: the global greedy over the free fakes' dense matrix, as bank indices."""
    free = np.array(sorted(set(range(len(bank))) - taken))
    return free[full_greedy(brute(bank[free], queries, metric))]


def crowded(n: int, q: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A bank whose first fakes attract every query (many collisions)."""
    rng = np.random.default_rng(seed)
    bank = rng.standard_normal((n, 8)).astype(np.float32)
    bank[:4] = 0.05 * bank[:4] + 2.0
    return bank, (2.0 + rng.standard_normal((q, 8))).astype(np.float32)


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_taken_fakes_are_excluded_exactly(metric):
    rng = np.random.default_rng(11)
    for trial in range(12):
        n, q = int(rng.integers(20, 90)), int(rng.integers(1, 12))
        bank, queries = crowded(n, q, seed=trial)
        taken = set(rng.choice(n, int(rng.integers(0, n - q + 1)), replace=False).tolist())
        ref = free_greedy(bank, queries, taken, metric)
        for source in (bank, FeatureIndex.build(bank, metric)):
            got = pair_without_reuse(source, queries, k=1, metric=metric, taken=taken)
            np.testing.assert_array_equal(got, ref)
            assert not set(got.tolist()) & taken


def test_taken_past_the_list_limit_and_through_ivf(monkeypatch):
    from falco.bank import pairing

    bank, queries = crowded(300, 40, seed=3)
    taken = set(range(0, 300, 3))  # the four attractive fakes among them
    ref = free_greedy(bank, queries, taken, "cosine")
    np.testing.assert_array_equal(pair_without_reuse(bank, queries, k=2, taken=taken), ref)
    monkeypatch.setattr(pairing, "_KMAX", 16)  # taken + k > _KMAX: start on the free fakes
    np.testing.assert_array_equal(pair_without_reuse(bank, queries, k=2, taken=taken), ref)
    np.testing.assert_array_equal(
        pair_without_reuse(FeatureIndex.build(bank), queries, k=2, taken=taken), ref
    )
    ivf = FeatureIndex.build(bank, kind="ivf", nlist=4, nprobe=1)
    got = pair_without_reuse(ivf, queries, k=2, taken=taken)
    assert len(np.unique(got)) == len(got) and not set(got.tolist()) & taken


def test_no_taken_is_the_plain_pairing(rand_data):
    bank, queries = rand_data
    ref = pair_without_reuse(bank, queries[:50], k=2)
    for taken in (None, set(), [], np.array([], np.int64)):
        np.testing.assert_array_equal(pair_without_reuse(bank, queries[:50], k=2, taken=taken), ref)


def test_hungarian_with_taken_is_optimal_over_the_free_fakes():
    rng = np.random.default_rng(8)
    bank = rng.standard_normal((8, 4)).astype(np.float32)
    queries = rng.standard_normal((4, 4)).astype(np.float32)
    taken = {1, 4, 6}
    free = [i for i in range(8) if i not in taken]
    dense = brute(bank, queries, "l2")
    h = pair_without_reuse(bank, queries, metric="l2", method="hungarian", taken=taken)
    best = min(dense[np.arange(4), list(p)].sum() for p in itertools.permutations(free, 4))
    assert not set(h.tolist()) & taken and len(set(h.tolist())) == 4
    assert dense[np.arange(4), h].sum() == pytest.approx(best)


def test_taken_errors(rand_data):
    bank, queries = rand_data
    with pytest.raises(InputError, match=r"queries: 5 queries but only 4 free bank vectors \(10 in the bank, 6 taken\)"):
        pair_without_reuse(bank[:10], queries[:5], taken={0, 1, 2, 3, 4, 5})
    pair_without_reuse(bank[:10], queries[:4], taken={0, 1, 2, 3, 4, 5})  # exactly enough
    with pytest.raises(InputError, match=r"taken: bank indices must be in \[0, 10\).*got 10"):
        pair_without_reuse(bank[:10], queries[:2], taken={10})
    with pytest.raises(InputError, match="taken: .*-1"):
        pair_without_reuse(bank[:10], queries[:2], taken=[-1])
    with pytest.raises(InputError, match="taken: expected bank indices"):
        pair_without_reuse(bank[:10], queries[:2], taken=[1.5])


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda b, q: exact_search(b[0], q), "bank_features.*2-D.*\\(48,\\)"),
        (lambda b, q: exact_search(b, q[:, :10]), "queries.*width 48.*\\(300, 10\\)"),
        (lambda b, q: exact_search(b, q, k=0), "k: .*got 0"),
        (lambda b, q: exact_search(b, q, k=2001), "k: .*2000.*got 2001"),
        (lambda b, q: exact_search(b, q, k=1.5), "k: .*1.5"),
        (lambda b, q: exact_search(b, q, metric="dot"), "metric.*'dot'"),
        (
            lambda b, q: exact_search(np.where(np.arange(2000)[:, None] == 5, np.nan, b), q),
            "bank_features.*NaN",
        ),
        (lambda b, q: exact_search(b, np.zeros_like(q)), "queries: row 0 is a zero vector"),
        (lambda b, q: exact_search(b[:0], q), "bank_features.*non-empty"),
        (lambda b, q: FeatureIndex.build(b, kind="lsh"), "kind.*'lsh'"),
        (lambda b, q: FeatureIndex.build(b, device="tpu"), "device.*'tpu'"),
        (lambda b, q: FeatureIndex.build(b).search(q, k=0), "k: .*got 0"),
        (lambda b, q: pair_without_reuse(b[:10], q), "queries: 300 queries but only 10"),
        (lambda b, q: pair_without_reuse(b, q, method="auction"), "method.*'auction'"),
        (
            lambda b, q: pair_without_reuse(FeatureIndex.build(b), q, metric="l2"),
            "metric.*'cosine'.*'l2'",
        ),
        (lambda b, q: FeatureIndex.load("/nonexistent/x.faiss"), "path.*nonexistent"),
    ],
)
def test_validation(rand_data, call, match):
    with pytest.raises(InputError, match=match):
        call(*rand_data)
