"""The identity policy of videos (falco.video.policy): one identity per track by default, tracks of one
person merged with ``--merge-tracks``, one person one identity across videos with
``--same-identity-across-videos`` (a mapping kept in ``<out>/identities.json``).

Clips are made here from the CelebA photos of ``celeba-ids`` (5 people, 30 photos each): a person's
photo panned for a few frames, grey frames longer than the tracker's gap (so the track ends), then
the next photo."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from falco.config import AnonymizeConfig
from falco.errors import InputError
from falco.latent.optimise import FalcoParams
from falco.run.anonymize import run_anonymize
from falco.run.image_files import load_image
from falco.run.manifest import RunManifest
from falco.video.policy import IdentityMap, cluster_tracks, identity_policy
from falco.video.synth import make_clip, pan_frames
from falco.video.tracking import Detection, Track
from tests.conftest import shared_path

SIZE = (176, 216)  # width, height: the 178x218 CelebA photo, even sides
SHOW = 4           # frames a person is seen
GAP = 11           # grey frames between two people: longer than the tracker's max gap (8)


def photo(person: int, index: int) -> np.ndarray:
    folder = shared_path("data", "celeba-ids", "clr", str(person))
    return load_image(sorted(folder.glob("*.jpg"))[index])


def scene(folder: Path, name: str, shots: list[tuple[int, int]], *, show: int = SHOW) -> Path:
    """A clip of the photos ``(person, index)`` of ``shots``, each seen ``show`` frames, grey between them."""
    frames: list[np.ndarray] = []
    for i, (person, index) in enumerate(shots):
        if i:
            frames += [np.full((SIZE[1], SIZE[0], 3), 120, np.uint8)] * GAP
        frames += pan_frames(photo(person, index), show, SIZE, window=(1, 1, 177, 217), pan=(0.5, 0.3), zoom=0.002)
    folder.mkdir(parents=True, exist_ok=True)
    return make_clip(folder / name, frames, fps=24, audio=False)


def run(src: Path, out: Path, models: Path, method: str = "ciagan", **kw):
    cfg = AnonymizeConfig(input=src, out=out, method=method, models=models, device="cpu", progress=False,
                          guard="off", **kw)
    return run_anonymize(cfg, echo=lambda *_: None)


def tracks(out: Path, source: str) -> list[dict]:
    with RunManifest(out) as m:
        return [f for f in m.faces() if f["source"] == source and f.get("track") is not None]


def cli(*args: str):
    from typer.testing import CliRunner

    from falco.cli import app

    return CliRunner().invoke(app, ["anonymize", *args, "--device", "cpu", "--no-progress", "--guard", "off"])


# -- the policy's parts, without a video --------------------------------------------------------


def _track(tid: int, frames: range) -> Track:
    det = Detection((0, 0, 10, 10), np.zeros((68, 2)), 1.0)
    return Track(tid, list(frames), [det] * len(frames))


def test_tracks_are_clustered_by_descriptor_but_never_when_seen_together():
    a, b = np.zeros(128), np.full(128, 0.1)  # |a - b| = 1.13: two people
    tracks = [_track(0, range(0, 5)), _track(1, range(0, 5)), _track(2, range(20, 25)), _track(3, range(30, 35))]
    desc = {0: np.stack([a, a + 0.01]), 1: np.stack([a]),  # same descriptor as 0 but in the same frames
            2: np.stack([a + 0.02]), 3: np.stack([b])}
    clusters = cluster_tracks(tracks, desc, 0.6)
    assert [c.tracks for c in clusters] == [[0, 2], [1], [3]]
    assert clusters[0].distances[2] < 0.6 and clusters[0].count == 3
    with pytest.raises(InputError, match="track 1"):
        cluster_tracks(tracks, {0: desc[0]}, 0.6)


def test_identity_map_matches_reuses_and_refuses_another_recognizer(tmp_path):
    path = tmp_path / "identities.json"
    a, b = np.zeros(128), np.full(128, 0.1)
    first = IdentityMap(path, recognizer="dlib", threshold=0.6)
    c1 = cluster_tracks([_track(0, range(3)), _track(1, range(10, 13))], {0: a[None], 1: b[None]}, 0.6)
    got = first.assign("a.mp4", c1, lambda i: f"key-a-{i}")
    assert [i["key"] for i, _ in got] == ["key-a-0", "key-a-1"]
    first.record_fakes("bank1", {"key-a-0": 7})
    first.save()
    second = IdentityMap(path, recognizer="dlib", threshold=0.6)
    c2 = cluster_tracks([_track(0, range(3))], {0: (b + 0.01)[None]}, 0.6)
    (ident, distance), = second.assign("b.mp4", c2, lambda i: f"key-b-{i}")
    assert ident["key"] == "key-a-1" and distance < 0.6 and sorted(ident["videos"]) == ["a.mp4", "b.mp4"]
    assert second.fakes("bank1") == {"key-a-0": 7} and second.fakes("bank2") == {}
    again = second.assign("a.mp4", c1, lambda i: "unused")  # a resumed video: its own identities, not matched anew
    assert [i["key"] for i, _ in again] == ["key-a-0", "key-a-1"] and len(second.identities) == 2
    redone = cluster_tracks([_track(0, range(3))], {0: (a + 0.01)[None]}, 0.6)  # a.mp4 redone: one person now
    (ident, distance), = second.assign("a.mp4", redone, lambda i: "key-a-redo")
    assert ident["key"] == "key-a-redo" and distance is None  # a.mp4's first person left the mapping with it
    assert [(i["id"], i["key"], i["count"]) for i in second.identities] == [("person-0002", "key-a-1", 1),
                                                                           ("person-0003", "key-a-redo", 1)]
    assert np.allclose(second.identities[0]["descriptor"], b + 0.01)  # a.mp4's share of the mean taken out
    with pytest.raises(InputError, match="recognizer"):
        IdentityMap(path, recognizer="arcface", threshold=0.25)
    assert identity_policy(False, True) == identity_policy(True, True) == "across-videos"
    with pytest.raises(InputError, match="--merge-tracks must be true or false, got 'yes'"):
        identity_policy("yes", False)


# -- end to end, with the tiny model set --------------------------------------------------------


def test_merge_tracks_gives_one_person_one_identity_and_two_people_two(tiny_models, tmp_path, one_thread):
    src = scene(tmp_path / "in", "clip.mp4", [(3, 0), (4, 0), (3, 1)])  # 3, then 4, then 3 again (another photo)
    default, merged = tmp_path / "default", tmp_path / "merged"
    assert not run(src, default, tiny_models).failed
    rows = tracks(default, "clip.mp4")
    assert len(rows) == 3  # the person leaving for longer than the tracker's gap ends the track
    assert len({r["identity_keys"][0] for r in rows}) == 3  # default: every track its own identity
    assert {r["identity_policy"] for r in rows} == {"track"}

    summary = run(src, merged, tiny_models, merge_tracks=True, sidecar=True)
    assert not summary.failed and summary.faces == 3
    rows = tracks(merged, "clip.mp4")
    assert len(rows) == 3 and all(len(r["identity_keys"]) == 1 and len(r["draws"]) == 1 for r in rows)
    first, other, back = rows
    assert first["identity_keys"] == back["identity_keys"] and first["draws"] == back["draws"]
    assert first["identity_cluster"] == back["identity_cluster"] != other["identity_cluster"]
    assert other["identity_keys"] != first["identity_keys"]
    assert back["identity_distance"] < 0.6 and first["identity_tracks"] == [first["track"], back["track"]]
    sidecar = json.loads((merged / "clip.mp4.json").read_text())
    assert sidecar["provenance"]["identity_policy"] == "merge-tracks"
    assert [t["identity_cluster"] for t in sidecar["tracks"]] == [r["identity_cluster"] for r in rows]
    with RunManifest(merged) as m:
        assert m.runs()[-1]["config"]["merge_tracks"] is True
    assert not (merged / "identities.json").exists()  # within one video: nothing kept
    assert not (merged / ".video").exists()  # the descriptors went with the work folder


def test_same_identity_across_videos_through_the_cli_and_kept_between_runs(tiny_models, tmp_path, one_thread):
    first_in, both_in = tmp_path / "first", tmp_path / "both"
    scene(first_in, "a.mp4", [(1, 0)])
    scene(both_in, "a.mp4", [(1, 0)])
    scene(both_in, "b.mp4", [(1, 2), (4, 0)])  # person 1 in another photo, then person 4
    models = ["--models", str(tiny_models), "--method", "ciagan"]

    default = tmp_path / "default"
    res = cli(str(both_in), "--out", str(default), *models)
    assert res.exit_code == 0, res.output
    a, b = tracks(default, "a.mp4"), tracks(default, "b.mp4")
    assert a[0]["identity_keys"] != b[0]["identity_keys"] and a[0]["draws"] != b[0]["draws"]

    out = tmp_path / "out"
    res = cli(str(first_in), "--out", str(out), *models, "--same-identity-across-videos")
    assert res.exit_code == 0, res.output
    stored = json.loads((out / "identities.json").read_text())
    assert len(stored["identities"]) == 1 and "biometric" in stored["note"]
    assert len(stored["identities"][0]["descriptor"]) == 128
    res = cli(str(both_in), "--out", str(out), *models, "--same-identity-across-videos")  # a.mp4 done: skipped
    assert res.exit_code == 0, res.output
    a, b = tracks(out, "a.mp4"), tracks(out, "b.mp4")
    assert len(a) == 1 and len(b) == 2
    assert b[0]["identity_keys"] == a[0]["identity_keys"] and b[0]["draws"] == a[0]["draws"]
    assert b[0]["identity_id"] == a[0]["identity_id"] and b[0]["identity_match_distance"] < 0.6
    assert b[1]["identity_keys"] != a[0]["identity_keys"] and b[1]["identity_id"] != a[0]["identity_id"]
    stored = json.loads((out / "identities.json").read_text())
    assert [sorted(i["videos"]) for i in stored["identities"]] == [["a.mp4", "b.mp4"], ["b.mp4"]]

    res = cli(str(both_in), "--out", str(out), *models)  # the policy of --out cannot change
    message = res.output + str(res.exception)
    assert res.exit_code != 0 and "--same-identity-across-videos" in message and "\n" not in str(res.exception)
    res = cli(str(both_in), "--out", str(out), *models, "--same-identity-across-videos")  # the refusal left no trace
    assert res.exit_code == 0, res.output
    (out / "identities.json").unlink()
    res = cli(str(both_in), "--out", str(out), *models, "--same-identity-across-videos")
    assert res.exit_code != 0 and "identities.json is missing" in res.output + str(res.exception)


def test_falco_gives_one_person_the_same_fake_in_two_videos(tiny_models, tiny_bank, tmp_path, one_thread):
    src = tmp_path / "in"
    scene(src, "a.mp4", [(3, 0)], show=3)
    scene(src, "b.mp4", [(3, 2)], show=3)
    out = tmp_path / "out"
    summary = run(src, out, tiny_models, "falco", falco=FalcoParams(steps=1), bank=tiny_bank, video_steps=0,
                  same_identity_across_videos=True)
    assert not summary.failed and summary.done == 2
    a, b = tracks(out, "a.mp4"), tracks(out, "b.mp4")
    assert len(a) == len(b) == 1
    assert a[0]["draws"] == [a[0]["neighbour"]] and b[0]["draws"] == [b[0]["neighbour"]]
    assert a[0]["neighbour"] == b[0]["neighbour"] and a[0]["identity_id"] == b[0]["identity_id"]
    stored = json.loads((out / "identities.json").read_text())
    (ident,) = stored["identities"]
    assert list(ident["fakes"].values()) == [a[0]["neighbour"]]


def test_an_interrupted_run_resumes_with_the_same_identities(tiny_models, tmp_path, monkeypatch, one_thread):
    import falco.run.video as video

    src = scene(tmp_path / "in", "clip.mp4", [(3, 0), (4, 0), (3, 1)])
    kw = dict(same_identity_across_videos=True, video_segment=10)
    reference = tmp_path / "reference"
    assert not run(src, reference, tiny_models, **kw).failed

    def stop(done: int, total: int) -> None:
        if done == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(video, "after_segment", stop)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run(src, out, tiny_models, **kw)
    assert json.loads((out / "identities.json").read_text())["identities"]  # matched before the first frame
    monkeypatch.undo()
    assert not run(src, out, tiny_models, **kw).failed
    assert (out / "clip.mp4").read_bytes() == (reference / "clip.mp4").read_bytes()
    assert (out / "identities.json").read_text() == (reference / "identities.json").read_text()  # not counted twice
    assert [r["identity_id"] for r in tracks(out, "clip.mp4")] == ["person-0001", "person-0002", "person-0001"]
