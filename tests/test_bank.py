"""The fake bank on a tiny random model set: build, search, pairing, resume, compatibility, CLI."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import falco.bank as bank_mod
from falco.bank import (
    Bank,
    bank_status,
    build_bank,
    chunk_z,
    exact_search,
    pair_without_reuse,
    render_fakes,
)
from falco.errors import CheckpointError, InputError, ModelNotFoundError
from falco.bank.features import ClipExtractor, embed_faces, load_extractor
from falco.models.zoo import load_role

NUM, CHUNK, BATCH, PSI, SEED = 40, 16, 8, 0.7, 3  # chunks of 16, 16, 8; two batches per full chunk


def build(out: Path, G, ex, **kw) -> Path:
    args = {"num": NUM, "chunk_size": CHUNK, "batch_size": BATCH, "truncation": PSI, "seed": SEED, "progress": False}
    args.update(kw)
    return build_bank(out, G, ex, **args)


def digest(path: Path) -> dict[str, str]:
    """sha256 of every file of a bank except the ones that hold times (manifest, build.json)."""
    return {p.relative_to(path).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file() and p.name not in ("manifest.json", "build.json", ".falco.lock")}


@pytest.fixture(scope="module")
def models(tiny_models) -> Path:
    return tiny_models


@pytest.fixture(scope="module")
def G(models):
    return load_role("generator", models)


@pytest.fixture(scope="module")
def ex(models):
    return load_extractor("farl", models)


@pytest.fixture(scope="module")
def ref(tmp_path_factory, G, ex) -> Path:
    """An uninterrupted build: the reference every other build is compared with."""
    return build(tmp_path_factory.mktemp("ref") / "bank", G, ex)


# ----------------------------------------------------------------------------- building


def test_build_end_to_end(ref, G, ex):
    bank = Bank.open(ref)
    m = bank.manifest
    assert len(bank) == m["count"] == NUM
    assert (m["w_dim"], m["num_ws"], m["truncation"], m["seed"]) == (G.w_dim, G.num_ws, PSI, SEED)
    assert m["features"]["name"] == "farl" and m["features"]["dim"] == ex.dim == 32
    assert m["features"]["preprocessing"] == ex.preprocessing == "clip-32-[0,1]"  # the tiny FaRL is 32 px
    assert m["generator"]["fingerprint"] == bank_mod.generator_fingerprint(G)
    assert m["index"]["kind"] == "flat" and (ref / "index.faiss").is_file()
    assert [c["count"] for c in m["chunks"]] == [16, 16, 8]
    assert bank.ws.shape == (NUM, G.w_dim) and bank.ws.dtype == torch.float32
    assert bank.features.shape == (NUM, ex.dim) and bank.features.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(bank.features, axis=1), 1.0, atol=1e-5)
    assert bank.verify() == []
    # w = mapping(z) truncated, z drawn per chunk from the seed
    with torch.no_grad():
        z = torch.cat([chunk_z(SEED, c, CHUNK, G.z_dim)[:n] for c, n in enumerate([16, 16, 8])])
        expected = torch.cat([G.mapping(z[s:s + BATCH], truncation_psi=PSI) for s in range(0, NUM, BATCH)])
    assert torch.equal(bank.ws, expected)
    assert not torch.equal(bank.ws[:16], bank.ws[16:32])  # chunks draw different z
    w_plus = bank.w_plus([3, 39])
    assert w_plus.shape == (2, G.num_ws, G.w_dim) and torch.equal(w_plus[1, 7], bank.ws[39])


def test_features_are_the_real_face_path(ref, G, ex):
    """A fake's bank features equal what embed_faces gives for its rendered 256-px crop."""
    bank = Bank.open(ref)
    faces = render_fakes(G, bank.ws[10:20])
    assert faces.shape == (10, 256, 256, 3) and faces.dtype == np.uint8
    feats = embed_faces(ex, faces, batch_size=4)
    np.testing.assert_allclose(feats, bank.features[10:20], atol=2e-5)
    idx, dist = bank.search(feats, k=1)
    assert idx[:, 0].tolist() == list(range(10, 20)) and dist.max() < 1e-4
    # thumbnails come from the same images (area-averaged to 64 px)
    thumb = bank.thumbnail(13)
    small = torch.nn.functional.interpolate(torch.as_tensor(faces[3:4]).permute(0, 3, 1, 2).float(), size=(64, 64),
                                            mode="area")[0].permute(1, 2, 0).numpy()
    assert thumb.shape == (64, 64, 3) and np.abs(thumb.astype(float) - small).max() <= 1.0


def test_both_sides_of_pairing_use_one_preprocessing(ref, G, ex):
    """A fake as the bank builder embedded it and the same image given to FALCO's query path as a
    real aligned crop (uint8 -> to_tensor -> Bank.query_features) have the same feature; that
    feature is FaRL's embedding of the face in [0, 1] with CLIP mean/std, while the attribute
    loss's input (the shared network's own preprocess) stays in [-1, 1] without mean/std."""
    from falco.latent.images import to_tensor
    from falco.models.farl import CLIP_MEAN, CLIP_STD

    bank = Bank.open(ref)
    faces = render_fakes(G, bank.ws[:6])
    x_real = to_tensor(faces, size=256)  # exactly what FalcoAnonymizer._process embeds
    feats = bank.query_features(ex, x_real)
    np.testing.assert_allclose(feats, bank.features[:6], atol=2e-5)
    assert bank.pair(feats).tolist() == list(range(6))

    net = ex.net
    x01 = torch.nn.functional.interpolate((x_real + 1) / 2, size=(32, 32), mode="bilinear", antialias=True)
    clip_in = (x01 - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(ex.preprocess(x_real), clip_in, atol=1e-5, rtol=0)
    by_hand = torch.nn.functional.normalize(net.pool(net.encode_tokens(clip_in)), dim=-1)
    np.testing.assert_allclose(feats, by_hand.numpy(), atol=2e-5)
    # the attribute loss's convention is untouched: [-1, 1] in, no mean/std
    assert net.normalize is False
    black = torch.full((1, 3, 256, 256), -1.0)
    assert torch.equal(net.preprocess(black), torch.full((1, 3, 32, 32), -1.0))
    legacy = ex.with_preprocessing("farl-32-[-1,1]")
    assert legacy.net is net and ex.preprocessing == "clip-32-[0,1]"  # a view: same network
    torch.testing.assert_close(legacy(x_real), torch.nn.functional.normalize(net.pooled(x_real), dim=-1))
    assert np.abs(legacy(x_real).numpy() - feats).max() > 1e-3  # the two preprocessings differ


def test_a_bank_built_before_the_preprocessing_was_recorded_pairs_as_before(tmp_path, G, ex):
    """A bank whose FaRL features were embedded the old way ([-1, 1], no mean/std) and whose
    manifest has no preprocessing field opens, accepts today's extractor (its fingerprint is
    the old one), and embeds its queries the old way, so they pair as before."""
    from falco.bank.features import module_fingerprint
    from falco.latent.images import to_tensor

    old_ex = ex.with_preprocessing("farl-32-[-1,1]")
    out = build(tmp_path / "old", G, old_ex, num=8, chunk_size=8, thumbnails=False)
    m = json.loads((out / "manifest.json").read_text())
    assert m["features"]["preprocessing"] == "farl-32-[-1,1]"  # an explicitly recorded old id works too
    # the fingerprint is the formula banks of that time recorded
    assert m["features"]["fingerprint"] == module_fingerprint(
        ex.net, "farl", 32, {"normalize": False, "input": "resize-short-224-centre-crop"})
    del m["features"]["preprocessing"]
    (out / "manifest.json").write_text(json.dumps(m))

    bank = Bank.open(out)
    assert bank.preprocessing is None and "not recorded" in repr(bank)
    bank.check_compatible(G, ex)  # today's default extractor, compared with the bank's preprocessing
    assert bank.query_extractor(ex).preprocessing == "farl-32-[-1,1]" and bank.query_extractor(ex).net is ex.net
    x_real = to_tensor(render_fakes(G, bank.ws), size=256)
    np.testing.assert_allclose(bank.query_features(ex, x_real), bank.features, atol=2e-5)
    np.testing.assert_allclose(embed_faces(ex, render_fakes(G, bank.ws), preprocessing="farl-32-[-1,1]"),
                               bank.features, atol=2e-5)
    assert np.abs(ex(x_real).numpy() - bank.features).max() > 1e-3  # the new preprocessing would not match

    m["features"]["preprocessing"] = "dino-224"
    (out / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(InputError, match="preprocessing 'dino-224', which this 'farl' extractor cannot apply"):
        Bank.open(out).check_compatible(None, ex)


def test_each_extractor_names_its_preprocessing(models):
    from open_clip.transformer import VisionTransformer

    arc = load_extractor("arcface", models)
    assert arc.preprocessing == arc.legacy_preprocessing == "arcface-256-crop-112-[-1,1]"
    x = torch.rand(2, 3, 256, 256) * 2 - 1
    torch.testing.assert_close(arc.preprocess(x), arc.net.crop(x))
    torch.testing.assert_close(arc(x), torch.nn.functional.normalize(arc.net(x), dim=-1))
    vit = VisionTransformer(image_size=32, patch_size=8, width=32, layers=1, heads=1, mlp_ratio=2.0, output_dim=24)
    clip = ClipExtractor(vit, image_size=32)
    assert clip.preprocessing == clip.legacy_preprocessing == "clip-32-[0,1]-bicubic"
    assert ex_ids(load_extractor("farl", models)) == ("clip-32-[0,1]", "farl-32-[-1,1]", "farl-32-[-1,1]")
    assert load_extractor("farl", models, preprocessing="farl-32-[-1,1]").preprocessing == "farl-32-[-1,1]"
    with pytest.raises(InputError, match="preprocessing: the 'arcface' extractor applies"):
        arc.with_preprocessing("clip-224-[0,1]")


def ex_ids(e) -> tuple[str, ...]:
    return (e.preprocessing, *e.preprocessings[1:], e.legacy_preprocessing)


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_search_matches_numpy_brute_force(ref, metric):
    bank = Bank.open(ref)
    q = np.random.default_rng(0).standard_normal((25, bank.dim)).astype(np.float32)
    idx, dist = bank.search(q, k=5, metric=metric)
    b, qq = bank.features.astype(np.float64), q.astype(np.float64)
    if metric == "cosine":
        qq = qq / np.linalg.norm(qq, axis=1, keepdims=True)
        full = 1.0 - qq @ (b / np.linalg.norm(b, axis=1, keepdims=True)).T
    else:
        full = np.sqrt(((qq[:, None] - b[None]) ** 2).sum(-1))
    expected = np.argsort(full, axis=1, kind="stable")[:, :5]
    np.testing.assert_array_equal(idx, expected)
    np.testing.assert_allclose(dist, np.take_along_axis(full, expected, 1), atol=1e-6)
    np.testing.assert_array_equal(exact_search(bank.features, q, k=5, metric=metric)[0], expected)
    np.testing.assert_array_equal(bank.search(q, k=5, metric=metric, exact=True)[0], expected)


def test_pair_with_and_without_reuse(ref):
    bank = Bank.open(ref)
    q = np.repeat(bank.features[[7]] + 0.01, 12, axis=0)  # twelve faces that all prefer fake 7
    assert bank.pair(q).tolist() == [7] * 12
    got = bank.pair(q, reuse=False)
    assert got.dtype == np.int64 and len(set(got.tolist())) == 12 and got[0] == 7
    nn_order = bank.search(q[:1], k=12)[0][0]
    assert sorted(got.tolist()) == sorted(nn_order.tolist())  # the twelve nearest fakes, each once
    with pytest.raises(InputError, match="--no-reuse: the bank has 40 fakes and 0 are taken, 41 more faces"):
        bank.pair(np.repeat(q[:1], 41, axis=0), reuse=False)
    with pytest.raises(InputError, match="features: expected feature width 32"):
        bank.search(np.ones((2, 31), np.float32))


def test_pair_without_reuse_skips_taken_fakes(ref):
    bank = Bank.open(ref)
    q = np.repeat(bank.features[[7]] + 0.01, 12, axis=0)
    taken = {7, 3, 20}
    got = bank.pair(q, reuse=False, taken=taken)
    assert len(set(got.tolist())) == 12 and not set(got.tolist()) & taken
    order = [int(i) for i in bank.search(q[:1], k=40)[0][0] if int(i) not in taken]
    assert sorted(got.tolist()) == sorted(order[:12])  # the twelve nearest free fakes, each once
    np.testing.assert_array_equal(got, pair_without_reuse(bank.features, q, taken=taken))
    assert bank.pair(q, taken=taken).tolist() == [7] * 12  # with reuse, nothing is taken
    bank.pair(q[:2], reuse=False, taken=np.arange(38))  # exactly enough free fakes
    with pytest.raises(InputError, match="--no-reuse: the bank has 40 fakes and 38 are taken, 3 more faces"):
        bank.pair(q[:3], reuse=False, taken=set(range(38)))
    with pytest.raises(InputError, match="taken: bank indices must be in"):
        bank.pair(q[:1], reuse=False, taken={40})


def test_falco_pairs_through_the_bank(ref):
    """FalcoAnonymizer._pair goes through Bank.pair: nearest fakes with reuse; without, one face at a
    time in order, each the nearest fake still free (so a face's fake does not depend on its batch)."""
    from falco.methods.falco import FalcoAnonymizer

    bank = Bank.open(ref)
    falco = FalcoAnonymizer.__new__(FalcoAnonymizer)  # pairing needs no networks
    falco.bank, falco.reuse, falco.used = bank, True, {7}
    q = np.repeat(bank.features[[7]] + 0.01, 6, axis=0)
    np.testing.assert_array_equal(falco._pair(q), bank.search(q, k=1)[0][:, 0])
    assert falco.summary() == {} and bank.pairing_checked == 0  # exact index: nothing to measure
    falco.reuse = False
    got = falco._pair(q)
    unit = bank.features / np.linalg.norm(bank.features, axis=1, keepdims=True)
    taken, want = {7}, []
    for row in q:  # brute force: cosine distance, ties to the lowest index
        order = [int(i) for i in np.argsort(1 - unit @ (row / np.linalg.norm(row)), kind="stable") if i not in taken]
        want.append(order[0])
        taken.add(order[0])
    assert got.tolist() == want and len(set(want)) == 6 and 7 not in want
    assert falco._pair(q[:2]).tolist() == want[:2]  # the same faces in a smaller batch: the same fakes
    falco.used = set(range(36))
    with pytest.raises(InputError, match="--no-reuse: the bank has 40 fakes and 36 are taken"):
        falco._pair(q)


def _as_ivf(path: Path, *, nlist: int, nprobe: int) -> Bank:
    """Open the bank at ``path`` with an approximate (IVF) index in place of its own."""
    from falco.bank.index import FeatureIndex

    bank = Bank.open(path)
    bank._index = FeatureIndex.build(bank.features, kind="ivf", nlist=nlist, nprobe=nprobe, seed=0)
    bank.manifest["index"]["kind"] = "ivf"
    return bank


def test_an_approximate_index_measures_its_recall_on_the_queries(ref):
    """Every N-th query (the first included) is also searched exactly; recall@1 counts those the
    index answered with a fake as close as the exact nearest."""
    bank = _as_ivf(ref, nlist=8, nprobe=1)
    assert bank.approximate and bank.pairing_recall_at_1 is None and bank.pairing_checked == 0
    bank.recall_check_every = 3
    q = np.random.default_rng(4).standard_normal((40, bank.dim)).astype(np.float32)
    got = np.concatenate([bank.pair(q[:10]), bank.pair(q[10:11]), bank.pair(q[11:25])])
    pick = np.arange(0, 25, 3)  # queries 0, 3, ..., 24 across the three calls
    exact_d = exact_search(bank.features, q[pick], k=1)[1][:, 0]
    unit = bank.features / np.linalg.norm(bank.features, axis=1, keepdims=True)
    got_d = 1 - np.sum(unit[got[pick]] * (q[pick] / np.linalg.norm(q[pick], axis=1, keepdims=True)), axis=1)
    hits = int(np.sum(got_d <= exact_d + 1e-5))
    assert bank.pairing_checked == len(pick) == 9
    assert bank.pairing_recall_at_1 == pytest.approx(hits / 9)
    assert hits < 9  # one list of eight probed: the index does miss (so the counter is not trivially 1)
    # without reuse the index's nearest fake is checked the same way; query 27 is the next checked one
    bank.pair(q[25:28], reuse=False)
    assert bank.pairing_checked == 10
    bank.search(q[:5], exact=True)  # exact searches are not the index's answers: not counted
    assert bank.pairing_checked == 10


def test_the_run_summary_reports_the_measured_recall(tmp_path, ref, models):
    """An anonymize run on a bank with an approximate index records pairing_recall_at_1 and
    pairing_checked in its summary, and prints them; the base hook adds nothing."""
    from falco.config import AnonymizeConfig
    from falco.latent.optimise import FalcoParams
    from falco.methods.base import Anonymizer
    from falco.run.anonymize import run_anonymize
    from falco.run.manifest import RunManifest
    from tests.conftest import shared_path

    class Plain(Anonymizer):
        name = "plain"

        def apply(self, photo, faces, results):
            return photo.copy(), []

    assert Plain().summary() == {}
    approx = tmp_path / "bank"
    shutil.copytree(ref, approx)
    _as_ivf(approx, nlist=1, nprobe=1).index.save(approx / "index.faiss")  # one list: IVF, but never misses
    m = json.loads((approx / "manifest.json").read_text())
    m["index"]["kind"] = "ivf"
    (approx / "manifest.json").write_text(json.dumps(m))
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(shared_path("data", "faces", "2008_001322.jpg"), src / "three.jpg")
    lines: list[str] = []
    out = tmp_path / "out"
    summary = run_anonymize(AnonymizeConfig(input=src, out=out, models=models, bank=approx, format="png",
                                            device="cpu", guard="off", progress=False, falco=FalcoParams(steps=1)),
                            echo=lines.append)
    assert summary.faces == 3
    with RunManifest(out) as man:
        run = man.runs()[-1]["summary"]
    assert run["pairing_checked"] == 1 and run["pairing_recall_at_1"] == 1.0  # the first of 3 queries
    assert "falco: pairing_recall_at_1 1.0000, pairing_checked 1" in lines


# ----------------------------------------------------------------------------- resuming


def test_interrupted_build_resumes_to_the_same_bank(tmp_path, ref, G, ex, monkeypatch):
    out = tmp_path / "bank"
    calls = {"n": 0}
    real_embed = ex._embed

    def flaky(x):
        calls["n"] += 1
        if calls["n"] == 3:  # first batch of the second chunk
            raise RuntimeError("simulated crash")
        return real_embed(x)

    monkeypatch.setattr(ex, "_embed", flaky)
    with pytest.raises(RuntimeError, match="simulated crash"):
        build(out, G, ex)
    st = bank_status(out)
    assert (st["state"], st["chunks_done"], st["chunks_total"]) == ("unfinished", 1, 3)
    assert not (out / "manifest.json").exists()
    with pytest.raises(InputError, match=r"unfinished \(1 of 3 chunks written\).*re-run the same `falco bank build"):
        Bank.open(out)

    calls["n"] = 100
    build(out, G, ex)
    assert calls["n"] == 100 + 3  # only chunks 1 and 2 were made: 2 + 1 batches
    assert digest(out) == digest(ref)  # chunks, contact sheets and index: byte for byte
    a, b = Bank.open(out), Bank.open(ref)
    assert torch.equal(a.ws, b.ws) and np.array_equal(a.features, b.features)
    assert [c["sha256"] for c in a.manifest["chunks"]] == [c["sha256"] for c in b.manifest["chunks"]]


def test_killed_build_resumes_to_the_same_bank(tmp_path, ref, models, G, ex):
    """SIGKILL in the middle of writing the second chunk file, in a real process."""
    out = tmp_path / "bank"
    script = textwrap.dedent(f"""
        import os, signal
        import falco.bank.build as B
        import falco.bank.writer as W
        from falco.bank.features import load_extractor
        from falco.run.inputs import atomic_path
        from falco.models.zoo import load_role
        real = W.write_chunk
        n = [0]
        def write(path, *a, **k):
            n[0] += 1
            if n[0] == 2:
                with atomic_path(path) as tmp:
                    tmp.write_bytes(b"half a chunk")
                    os.kill(os.getpid(), signal.SIGKILL)
            real(path, *a, **k)
        W.write_chunk = write
        B.build_bank({str(out)!r}, load_role("generator", {str(models)!r}), load_extractor("farl", {str(models)!r}),
                     num={NUM}, chunk_size={CHUNK}, batch_size={BATCH}, truncation={PSI}, seed={SEED}, progress=False)
    """)
    res = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=120)
    assert res.returncode == -9, res.stderr
    leftovers = list(out.rglob(".*.tmp"))
    assert len(leftovers) == 1 and leftovers[0].parent.name == "chunks"
    assert bank_status(out)["chunks_done"] == 1
    with pytest.raises(InputError, match="unfinished"):
        Bank.open(out)
    build(out, G, ex)
    assert not list(out.rglob(".*.tmp"))
    assert digest(out) == digest(ref)


def test_finished_bank_is_kept_or_refused(tmp_path, ref, G, ex, monkeypatch):
    before = digest(ref)
    monkeypatch.setattr(ex, "_embed", lambda x: pytest.fail("a finished bank must not be rebuilt"))
    assert build(ref, G, ex) == ref  # same settings: nothing to do
    monkeypatch.undo()
    with pytest.raises(InputError, match=r"finished bank built with other settings \(truncation 0.7 -> 0.5\)"):
        build(ref, G, ex, truncation=0.5)
    with pytest.raises(InputError, match=r"other settings \(count 40 -> 41\)"):
        build(ref, G, ex, num=41)
    assert digest(ref) == before
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "me.jpg").write_bytes(b"x")
    with pytest.raises(InputError, match="not empty and not a bank"):
        build(foreign, G, ex)


def test_unfinished_bank_with_other_settings_is_refused(tmp_path, G, ex, monkeypatch):
    out = tmp_path / "bank"
    monkeypatch.setattr(ex, "_embed", lambda x: (_ for _ in ()).throw(RuntimeError("stop")))
    with pytest.raises(RuntimeError):
        build(out, G, ex)
    monkeypatch.undo()
    with pytest.raises(InputError, match=r"unfinished bank built with other settings \(seed 3 -> 4\)"):
        build(out, G, ex, seed=4)


# ----------------------------------------------------------------------------- opening, compatibility


def test_open_errors(tmp_path, ref):
    with pytest.raises(InputError, match="does not exist"):
        Bank.open(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="not a fake bank"):
        Bank.open(tmp_path / "empty")
    broken = tmp_path / "broken"
    shutil.copytree(ref, broken)
    (broken / "chunks" / "chunk_00001.safetensors").unlink()
    with pytest.raises(InputError, match="damaged: missing chunks/chunk_00001.safetensors"):
        Bank.open(broken)
    tampered = tmp_path / "tampered"
    shutil.copytree(ref, tampered)
    m = json.loads((tampered / "manifest.json").read_text())
    m["format"] = "falco-bank-99"
    (tampered / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(InputError, match="format 'falco-bank-99'"):
        Bank.open(tampered)


def test_check_compatible(ref, models, G, ex):
    from falco.bank.features import FarlExtractor
    from falco.models.farl import load_farl, tiny_farl_state_dict
    from falco.models.stylegan2 import Generator
    from falco.models.tiny import tiny_generator

    bank = Bank.open(ref)
    bank.check_compatible(load_role("generator", models), load_extractor("farl", models))  # fresh copies: fine
    with pytest.raises(InputError, match="generator: .* weights differ"):
        bank.check_compatible(tiny_generator(seed=1), ex)
    G2 = load_role("generator", models)
    with torch.no_grad():
        G2.noises.noise_0.add_(1.0)  # even a noise buffer changes the faces
    with pytest.raises(InputError, match="weights differ"):
        bank.check_compatible(G2)
    with pytest.raises(InputError, match="w_dim 64 and 10 ws, got w_dim 16 and 6 ws"):
        bank.check_compatible(Generator(img_resolution=16, w_dim=16, num_mapping_layers=1,
                                        channels={4: 8, 8: 8, 16: 8}))
    with pytest.raises(InputError, match="'farl' features of width 32, got 'arcface' of width 512"):
        bank.check_compatible(G, load_extractor("arcface", models))
    other = FarlExtractor(load_farl({"state_dict": tiny_farl_state_dict(seed=5)}))
    with pytest.raises(InputError, match="another 'farl' network"):
        bank.check_compatible(None, other)


# ----------------------------------------------------------------------------- extractors, validation


def test_extractors(models, tmp_path):
    from open_clip.transformer import VisionTransformer

    x = torch.rand(3, 3, 80, 64) * 2 - 1  # any size
    for kind, dim in (("farl", 32), ("arcface", 512)):
        f = load_extractor(kind, models)(x)
        assert f.shape == (3, dim) and f.dtype == torch.float32
        torch.testing.assert_close(f.norm(dim=1), torch.ones(3))
    torch.manual_seed(0)
    vit = VisionTransformer(image_size=32, patch_size=8, width=32, layers=1, heads=1, mlp_ratio=2.0, output_dim=24)
    clip = ClipExtractor(vit, image_size=32)
    assert clip.dim == 24 and clip(x).shape == (3, 24)
    # CLIP preprocessing: [0, 1], short side to 32 (bicubic), centre crop, mean/std
    p = clip.preprocess(x)
    assert p.shape == (3, 3, 32, 32)
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    assert torch.allclose(clip.preprocess(torch.full((1, 3, 32, 32), -1.0)), -mean / torch.tensor(
        [0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1), atol=1e-6)
    (tmp_path / "m").mkdir()
    with pytest.raises(ModelNotFoundError, match="CLIP ViT-B/16 weights not found.*open_clip_model.safetensors"):
        load_extractor("clip", tmp_path / "m")
    with pytest.raises(InputError, match="--features must be one of farl, clip, arcface, got 'dino'"):
        load_extractor("dino", models)


class _Opaque:
    """A class a checkpoint might pickle: the weights-only loader must refuse it."""


def test_clip_weights_are_read_by_the_safe_reader(tmp_path):
    from safetensors.torch import save_file

    models = tmp_path / "m"
    models.mkdir()
    save_file({"text.w": torch.zeros(2)}, str(models / "open_clip_model.safetensors"))
    with pytest.raises(CheckpointError, match="open_clip_model.safetensors: no 'visual"):
        load_extractor("clip", models)
    (models / "open_clip_model.safetensors").unlink()
    torch.save({"state_dict": {"visual.w": torch.zeros(2)}, "obj": _Opaque()}, models / "open_clip_pytorch_model.bin")
    with pytest.raises(CheckpointError, match="_Opaque.*weights-only"):
        load_extractor("clip", models)
    (models / "open_clip_pytorch_model.bin").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="open_clip_pytorch_model.bin"):
        load_extractor("clip", models)


@pytest.mark.parametrize(("kw", "match"), [
    ({"num": 0}, "num must be an integer >= 1, got 0"),
    ({"truncation": 1.5}, "truncation must be in \\[0, 1\\], got 1.5"),
    ({"seed": -1}, "seed must be an integer >= 0, got -1"),
    ({"batch_size": 2.5}, "batch_size must be an integer"),
    ({"index": "lsh"}, "index must be .* got 'lsh'"),
    ({"thumbnail_size": 4}, "thumbnail_size must be an integer in \\[8, 256\\]"),
])
def test_build_validation(tmp_path, G, ex, kw, match):
    with pytest.raises(InputError, match=match):
        build(tmp_path / "bank", G, ex, **kw)
    assert not (tmp_path / "bank").exists()


# ----------------------------------------------------------------------------- CLI


def falco_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "falco", *args], check=False, capture_output=True, text=True, timeout=180)


def test_cli_build_and_info(tmp_path, models, G, ex, capsys):
    out = tmp_path / "bank"
    res = falco_cli("bank", "build", "--out", str(out), "--num", "10", "--chunk-size", "4", "--batch-size", "4",
                    "--seed", "2", "--models", str(models), "--device", "cpu", "--no-progress")
    assert res.returncode == 0, res.stderr
    assert "tiny random model set: outputs are not meaningful" in res.stderr
    assert f"bank: {out} (10 fakes)" in res.stdout
    bank = Bank.open(out)
    assert bank.manifest["config"]["num"] == 10 and bank.manifest["env"]["tiny_models"] is True
    assert bank.manifest["generator"]["sha256"] == hashlib.sha256(
        (models / "stylegan2-ffhq-config-f.pt").read_bytes()).hexdigest()
    lib = build_bank(tmp_path / "lib", G, ex, num=10, chunk_size=4, batch_size=4, seed=2, progress=False)
    assert torch.equal(bank.ws, Bank.open(lib).ws)  # the CLI is the library

    # info and a bad option through the same entry point, in process (a subprocess costs seconds)
    code, stdout, stderr = run_main(capsys, "bank", "info", str(out), "--verify")
    assert code == 0, stderr
    assert "fakes      10" in stdout and "verified: 3 chunk files" in stdout
    code, _, stderr = run_main(capsys, "bank", "build", "--out", str(tmp_path / "x"), "--num", "3",
                               "--models", str(models), "--features", "dino")
    assert code == 2 and not (tmp_path / "x").exists()
    assert stderr.strip().splitlines()[-1] == "error: --features must be one of farl, clip, arcface, got 'dino'"


def run_main(capsys, *args: str) -> tuple[int, str, str]:
    from falco.cli import main

    capsys.readouterr()
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err
