"""scripts/bench_detection.py: ground truth reading, scoring, the table and the recommendation (fake detectors)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import load_script, shared_path

bench = load_script("bench_detection")


class _Fixed:
    """Returns the same boxes for every photo."""

    def __init__(self, boxes):
        self.boxes = boxes

    def detect(self, image):
        return [(b, 1.0) for b in self.boxes]


def test_annotations_are_the_43_hand_drawn_boxes():
    truth = bench.annotated_boxes(shared_path("data", "faces"))
    assert len(truth) == 9 and sum(map(len, truth.values())) == 43
    assert all(x1 > x0 and y1 > y0 for boxes in truth.values() for x0, y0, x1, y1 in boxes)


def test_score_counts_hits_and_false_positives():
    image = np.zeros((10, 10, 3), np.uint8)
    s = bench.Sample("a", image, [(0, 0, 10, 10), (20, 20, 30, 30)])
    assert bench.score(s, [(1, 1, 10, 10), (50, 50, 60, 60)], 0.3) == (2, 1, 1)
    assert bench.score(s, [], 0.3) == (2, 0, 0)
    assert bench.score(bench.Sample("dogs", image, []), [(0, 0, 5, 5)], 0.3) == (0, 0, 1)
    one = bench.Sample("celeb", image, None)  # one face, position unknown
    assert bench.score(one, [], 0.3) == (1, 0, 0)
    assert bench.score(one, [(0, 0, 5, 5), (5, 5, 9, 9)], 0.3) == (1, 1, 1)


def test_bench_rows_table_and_recommendation():
    image = np.zeros((10, 10, 3), np.uint8)
    sets = {"faces": [bench.Sample("a", image, [(0, 0, 10, 10)]), bench.Sample("dogs", image, [])],
            "celeba": [bench.Sample("c", image, None)]}
    detectors = {"good": _Fixed([(0, 0, 10, 10)]), "bad": _Fixed([])}

    def get(name, upsample):
        if name == "broken":
            raise RuntimeError("no weights here\nsecond line")
        return detectors["good" if name == "mtcnn" else name]

    rows = bench.bench(["good", "bad", "broken", "mtcnn"], [0, 1], sets, get=get)
    by = {(r.detector, r.upsample, r.dataset): r for r in rows}
    assert [r.upsample for r in rows if r.detector == "mtcnn"] == [None, None]  # no upsampling of its own
    good = by[("good", 0, "faces")]
    assert (good.photos, good.faces, good.found, good.false_positives) == (2, 1, 1, 1)  # the "dog" box
    assert good.recall == 1.0 and good.fp_per_image == 0.5 and good.missed == []
    assert by[("bad", 1, "celeba")].recall == 0.0 and by[("bad", 1, "celeba")].missed == ["c"]
    assert by[("broken", 0, "faces")].error == "RuntimeError: no weights here"
    text = bench.table(rows)
    assert "| good | 0 | faces | 100.0 % (1/1) | 0.50 |" in text
    assert "| broken | 0 | faces | not available: RuntimeError: no weights here | | | |" in text
    assert "| mtcnn | - | celeba |" in text
    assert bench.recommend(rows) in ("good:0", "good:1", "mtcnn")
    assert bench.recommend([r for r in rows if r.detector in ("bad", "broken")]) in ("bad:0", "bad:1")
    assert bench.recommend([]) is None


@pytest.mark.slow
def test_main_runs_hog_on_a_subset(tmp_path, capsys):
    import json

    shared = shared_path("data").parent
    assert bench.main(["--detectors", "hog", "--upsample", "1", "--limit", "2", "--shared", str(shared),
                       "--out", str(tmp_path / "b.json")]) == 0
    data = json.loads((tmp_path / "b.json").read_text())
    assert [(r["detector"], r["dataset"], r["photos"]) for r in data["rows"]] == [("hog", "faces", 2),
                                                                                ("hog", "celeba", 2)]
    assert data["best"] == "hog:1" and "| hog | 1 | celeba | 100.0 % (2/2)" in capsys.readouterr().out


def test_jaw_deviation_is_measured_against_dlibs_landmarks_in_the_annotated_box():
    from PIL import Image

    from falco.faces.detect import get_detector

    truth = bench.annotated_boxes(shared_path("data", "faces"))
    name = "2008_001322.jpg"
    image = np.asarray(Image.open(shared_path("data", "faces", name)).convert("RGB"))
    boxes = truth[name]
    hog = get_detector("hog")

    class Shifted:
        """Finds the annotated boxes; its jaw points lie 3 px right of dlib's, the rest 9 px (not the jaw)."""

        def detect(self, img):
            return [(b, 1.0) for b in boxes]

        def landmarks(self, img, box):
            lm = hog.landmarks(img, box).copy()
            lm[:17, 0] += 3
            lm[17:, 1] += 9
            return lm

    sample = bench.Sample(name, image, boxes)
    row = bench.run_one(Shifted, "shifted", 1, "faces", [sample], 0.3)
    expected = []
    for b in boxes:
        ref = hog.landmarks(image, b)
        expected.append(3 / np.linalg.norm(ref[36:42].mean(0) - ref[42:48].mean(0)))
    assert row.found == len(boxes) == len(row.jaw)
    assert row.jaw == pytest.approx(expected, rel=1e-9)
    assert row.jaw_quantile(0.5) == pytest.approx(float(np.median(expected)))
    assert "| shifted | 1 | faces | 100.0 % " in bench.table([row]) and f"{np.median(expected):.3f} / " in bench.table([row])


def test_recommendation_prefers_the_closer_jaw_at_equal_recall():
    fast = bench.Row("fast", 1, "faces", photos=2, faces=2, found=2, cpu_seconds=1.0, jaw=[0.05, 0.30])
    slow = bench.Row("slow", 1, "faces", photos=2, faces=2, found=2, cpu_seconds=8.0, jaw=[0.05, 0.10])
    assert bench.recommend([fast, slow]) == "slow:1"
    # within the tolerance, speed decides
    near = bench.Row("near", 1, "faces", photos=2, faces=2, found=2, cpu_seconds=1.0, jaw=[0.05, 0.11])
    assert bench.recommend([near, slow]) == "near:1"
    # recall first
    missing = bench.Row("missing", 1, "faces", photos=2, faces=2, found=1, cpu_seconds=8.0, jaw=[0.0])
    assert bench.recommend([missing, fast]) == "fast:1"
