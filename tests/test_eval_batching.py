"""The batched network pass of ``eval-attributes`` (:mod:`falco.evaluation.batched`): same numbers as the
per-photo path, larger batches for the networks, bounded chunks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from falco.errors import InputError
from falco.evaluation import EvalConfig, FeatureCache, evaluate
from falco.evaluation import batched as batched_mod
from falco.evaluation import collect as collect_mod
from falco.evaluation import tools as tools_mod
from falco.evaluation.batched import batch_plan
from falco.evaluation.collect import collect_run
from falco.evaluation.pairing import list_photo_pairs
from falco.evaluation.summary import summarise_run
from falco.evaluation.tools import build_tools
from falco.run.image_files import load_image
from tests.conftest import real_and_anon_folders, require_mtcnn, shared_path

PHOTOS = ("2008_001009.jpg", "2008_001322.jpg", "2009_004587.jpg", "2007_007763.jpg")


class _SmallFeatures(torch.nn.Module):
    """Stands in for the FID Inception (same interface: ``[B, 3, H, W]`` in [0, 1] -> ``[B, 2048]``), but cheap."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 5, stride=4)
        self.fc = torch.nn.Linear(8 * 16, 2048)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.adaptive_avg_pool2d(torch.relu(self.conv(x)), 4)
        return self.fc(x.flatten(1))


class _Recording(torch.nn.Module):
    """Wraps the ArcFace encoder and records the batch size of every call."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.sizes: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(int(x.shape[0]))
        return self.inner(x)


@pytest.fixture(scope="module")
def models(tiny_models, tmp_path_factory) -> Path:
    """The tiny model set plus a tiny FaRL CelebA head, without the face parser (per photo, and slow here);
    the Inception is replaced by ``_SmallFeatures`` (:func:`small_inception`)."""
    from falco.pretrained.registry import REGISTRY
    from tests.test_evaluation import tiny_facer_checkpoint

    d = tmp_path_factory.mktemp("batch-models")
    for f in tiny_models.iterdir():
        if f.name != REGISTRY["bisenet-face-parsing"].filename:
            (d / f.name).symlink_to(f)
    torch.save(tiny_facer_checkpoint(), d / "face_attribute.farl.celeba.pt")
    return d


@pytest.fixture(scope="module")
def small_inception():
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tools_mod, "_inception", lambda models, device: _SmallFeatures().eval())
        yield


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Four photos (2 to 7 faces each) and an 'anonymized' copy: blurred, with the left third flattened."""
    from PIL import Image, ImageFilter

    def change(img):
        out = np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(1.5))).copy()
        out[:, : img.shape[1] // 3] = 128
        return out

    return real_and_anon_folders(tmp_path_factory.mktemp("batch-eval"), PHOTOS, change)


def _tools(models):
    tools = build_tools(detectors=("hog",), recognizers=("arcface",), classifiers=("landmarks", "farl-celeba"),
                        fid=True, models=models, device="cpu")
    assert "arcface" in tools.recognizers and tools.inception is not None
    assert any(c.name == "farl-celeba" for c in tools.classifiers)
    return tools


def _collect(tools, pairs, **kwargs):
    return collect_run(tools, FeatureCache(), pairs, None, examples=3, **kwargs)


def _same_data(a, b) -> None:
    """Two RunData agree: faces, detections, labels, crops exactly; embeddings and features to float tolerance."""
    assert len(a.faces) == len(b.faces) > 0
    for fa, fb in zip(a.faces, b.faces):
        assert (fa.source, fa.face_index, fa.real_box, fa.anon_box, fa.status) == \
            (fb.source, fb.face_index, fb.real_box, fb.anon_box, fb.status)
        assert np.array_equal(fa.anon_landmarks, fb.anon_landmarks)
    assert a.detections == b.detections
    for name in a.real_emb:
        for side in ("real_emb", "anon_emb"):
            ea, eb = np.stack(getattr(a, side)[name]), np.stack(getattr(b, side)[name])
            assert ea.shape == eb.shape
            np.testing.assert_allclose(ea, eb, rtol=0, atol=1e-5)
    assert a.real_labels == b.real_labels and a.anon_labels == b.anon_labels
    assert a.crop_ok == b.crop_ok
    for fa, fb in zip(a.real_feats + a.anon_feats, b.real_feats + b.anon_feats):
        assert (fa is None) == (fb is None)
        if fa is not None:
            np.testing.assert_allclose(fa, fb, rtol=1e-5, atol=1e-5)
    assert sorted(a.example_crops) == sorted(b.example_crops)
    for i, (ra, aa) in a.example_crops.items():
        assert np.array_equal(ra, b.example_crops[i][0]) and np.array_equal(aa, b.example_crops[i][1])
    assert a.part_change == b.part_change and a.counts == b.counts


def _numbers(run: dict, path: str = "") -> dict[str, float]:
    """Every number of a summarised run, by dotted key."""
    out: dict[str, float] = {}
    for k, v in run.items():
        key = f"{path}.{k}" if path else str(k)
        if isinstance(v, dict):
            out.update(_numbers(v, key))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[key] = float(v)
    return out


@pytest.fixture(scope="module")
def per_photo(models, folders, small_inception):
    """The tools (ArcFace's encoder wrapped in ``_Recording``), the photo pairs, the per-photo path's RunData and
    the batch sizes its ArcFace saw."""
    real, anon = folders
    pairs = list_photo_pairs(real, anon)
    tools = _tools(models)
    rec = tools.recognizers["arcface"]
    rec.encoder = _Recording(rec.encoder)
    data = _collect(tools, pairs)
    sizes = list(rec.encoder.sizes)
    rec.encoder.sizes.clear()
    return tools, pairs, data, sizes


def test_batched_pass_matches_per_photo(per_photo):
    """Same faces, embeddings, labels, features and report numbers; ArcFace sees batches of several photos' faces,
    and the per-photo assembly runs no network the batched pass ran."""
    tools, pairs, per_photo, sizes_per_photo = per_photo
    rec = tools.recognizers["arcface"]
    rec.encoder.sizes.clear()
    stats: dict[str, list[int]] = {}
    batched = _collect(tools, pairs, batch_size=8, batch_stats=stats)
    _same_data(per_photo, batched)

    faces = [sum(1 for f in per_photo.faces if f.source == pp.source) for pp in pairs]
    assert max(faces) < 8 <= sum(faces)  # a batch can only be larger than a photo's faces when it spans photos
    assert max(rec.encoder.sizes) == 8 > max(sizes_per_photo) and max(sizes_per_photo) <= max(faces)
    # every encoder call came from the batched pass: the assembly found the embeddings in the cache
    assert len(rec.encoder.sizes) == stats["emb:arcface"][0]
    assert sum(rec.encoder.sizes) == stats["emb:arcface"][1] <= 2 * sum(faces)
    assert stats["inception"][1] == 2 * sum(per_photo.crop_ok)
    assert stats["attr:farl-celeba"][1] == 2 * sum(faces)

    one = summarise_run(per_photo, tools, FeatureCache(), examples=3)[0]
    two = summarise_run(batched, tools, FeatureCache(), examples=3)[0]
    assert one["reid_rate"].keys() == {"arcface"} and one["detection_rate"]["hog"] is not None
    assert 0.0 < one["detection_rate"]["hog"] < 1.0  # the left third is flattened: a figure that can differ
    na, nb = _numbers(one), _numbers(two)
    assert na.keys() == nb.keys() and any(k.startswith("rank1_identification") for k in na)
    for k in na:
        assert nb[k] == pytest.approx(na[k], rel=1e-6, abs=1e-6), k


def test_chunks_smaller_than_the_faces_give_the_same_result(per_photo, monkeypatch):
    tools, pairs, whole, _ = per_photo
    chunks: list[int] = []
    run = batched_mod.run_networks

    def recording(tools, cache, photos, **kwargs):
        chunks.append([len(p.faces) for p in photos])
        return run(tools, cache, photos, **kwargs)

    monkeypatch.setattr(collect_mod, "run_networks", recording)
    small = _collect(tools, pairs, batch_size=3, chunk_faces=3)
    _same_data(whole, small)
    assert len(chunks) >= 3 and sum(map(sum, chunks)) == len(whole.faces)
    # a chunk closes as soon as it holds chunk_faces faces: only its last photo can take it past the bound
    assert all(sum(c[:-1]) < 3 for c in chunks)
    # a byte bound smaller than one photo pair: one pair per chunk
    chunks.clear()
    tiny = _collect(tools, pairs, batch_size=3, chunk_bytes=1)
    _same_data(whole, tiny)
    assert chunks == [[n] for n in (sum(1 for f in whole.faces if f.source == pp.source) for pp in pairs)]


def test_batched_embeddings_go_to_the_disk_cache(models, folders, small_inception, tmp_path, monkeypatch):
    """The real side's embeddings from the batched pass are persisted as the per-photo path persists them: a second
    (per-photo) evaluation computes no real-side embedding; the report records how the networks were fed."""
    real, anon = folders
    base = dict(real=real, anon=(anon,), names=("blur",), detectors=("hog",), recognizers=("arcface",),
                classifiers=("farl-celeba",), models=models, progress=False, examples=0, disk_cache=tmp_path / "c")
    first = evaluate(EvalConfig(**base, eval_batch_size=5), cache=FeatureCache())
    assert first.data["settings"]["batched"] is True and first.data["settings"]["eval_batch_size"] == 5
    from falco.faces import recognizers as rec_mod

    crops: list[int] = []
    embed_crops = rec_mod.ArcFaceRecognizer.embed_crops

    def counting(self, c):
        crops.append(len(c))
        return embed_crops(self, c)

    monkeypatch.setattr(rec_mod.ArcFaceRecognizer, "embed_crops", counting)
    second = evaluate(EvalConfig(**base, eval_batch_size=0), cache=FeatureCache())
    assert second.data["settings"]["batched"] is False and second.data["settings"]["eval_batch_size"] is None
    n = first.runs["blur"]["counts"]["faces"]
    assert n > 0 and 0 < sum(crops) <= n  # only the anonymized faces (not persisted) are embedded again
    a, b = _numbers(first.runs["blur"]), _numbers(second.runs["blur"])
    assert a.keys() == b.keys()
    for k in a:
        assert b[k] == pytest.approx(a[k], rel=1e-6, abs=1e-6), k


def test_batch_plan_by_device():
    assert batch_plan("cuda", None) == (True, 64)
    assert batch_plan("cuda:1", 0)[0] is False
    assert batch_plan("cpu", None) == (True, 16)
    assert batch_plan("cpu", 0)[0] is False
    assert batch_plan("cpu", 8) == (True, 8)
    for bad in (-1, 2.5, True):
        with pytest.raises(InputError, match="--eval-batch-size"):
            batch_plan("cpu", bad)


def test_mtcnn_batches_equal_size_photos():
    """MTCNN over photos of one size in one call gives each photo's own boxes (the CUDA path, checked on the CPU)."""
    from falco.evaluation.detection import MtcnnEvalDetector

    require_mtcnn()
    images = []
    for name in PHOTOS[:3]:
        img = load_image(shared_path("data", "faces", name))
        images.append(np.ascontiguousarray(img[:300, :340]))  # one size for all
    images.append(images[0][:, ::-1].copy())
    det = MtcnnEvalDetector(device="cpu")
    one_by_one = [det.boxes(i) for i in images]
    assert sum(map(len, one_by_one)) >= 3
    together = batched_mod.mtcnn_batch_boxes("cpu", images)
    assert len(together) == len(images)
    for a, b in zip(one_by_one, together):
        assert len(a) == len(b)
        assert all(max(abs(u - v) for u, v in zip(ba, bb)) <= 1 for ba, bb in zip(a, b))


def test_mtcnn_pass_fills_the_cache_like_the_per_photo_path(models, folders, small_inception):
    require_mtcnn()
    real, anon = folders
    pairs = list_photo_pairs(real, anon)[:2]
    tools = build_tools(detectors=("hog", "mtcnn"), recognizers=(), classifiers=(), fid=False, device="cpu")
    per_photo = collect_run(tools, FeatureCache(), pairs, None, examples=0)
    cache = FeatureCache()
    photos = [collect_mod._photo_faces(tools, cache, tools.detectors["hog"], pp.source, load_image(pp.real),
                                       load_image(pp.anon), None, pair_iou=0.3) for pp in pairs]
    stats = batched_mod.run_networks(tools, cache, photos, batch_size=4, mtcnn=True)
    assert stats["mtcnn"][1] == 2 * len(pairs)
    assert all(("det", d, "mtcnn") in cache for p in photos for d in (p.rd, p.ad))
    data = collect_mod.RunData(detections={n: collect_mod.DetectionCount() for n in tools.detectors})
    picker = collect_mod._Examples(0)
    for p in photos:
        collect_mod._assemble_photo(data, tools, cache, p, picker, detection_iou=0.5, device="cpu")
    assert data.detections == per_photo.detections
