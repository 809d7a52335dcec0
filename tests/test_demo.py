"""``falco demo``: the page explains every crop and face, numbers are rounded, progress shows steps."""

from __future__ import annotations

import html
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from falco.cli import app
from falco.run.demo import render_page
from falco.run.manifest import RunManifest

LONG_NUMBER = re.compile(r"\d\.\d{7,}")  # a float printed with its 16 digits


@pytest.mark.slow  # a full demo run
def test_demo_from_a_relative_out_dir_explains_every_face(tmp_path, monkeypatch):
    from falco.guard import covered_how

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FALCO_HOME", str(tmp_path / "home"))  # no pretrained models: the tiny set
    res = CliRunner().invoke(app, ["demo", "--out", "falco-demo", "--steps", "2", "--bank-size", "32",
                                   "--device", "cpu"])
    assert res.exit_code == 0, res.output
    page = tmp_path / "falco-demo" / "index.html"
    text = page.read_text()
    for src in re.findall(r'src="([^"]+)"', text):
        assert not Path(src).is_absolute() and (page.parent / html.unescape(src)).is_file(), src
    for words in ("aligned (FFHQ alignment)", "e4e inversion", "paired fake", "anonymized result"):
        assert words in text
    assert not LONG_NUMBER.search(text), LONG_NUMBER.search(text).group()
    assert "{&quot;" not in text and '{"' not in text  # losses as a table, not JSON
    with RunManifest(tmp_path / "falco-demo" / "result") as m:
        faces = m.faces()
    assert faces
    for face in faces:
        assert f"face {face['face_index']}: {face['status']}" in text
    # The astronaut with the tiny set: a false detection (the suit's patch) that only a solid mask covers.
    fell_back = [f for f in faces if f["status"] == "fallback"]
    assert fell_back
    for face in fell_back:
        assert html.escape(covered_how(face)) in text
        assert html.escape(face["reason"]) in text
    assert "a solid mask (blur still matched)" in text and "typical of a false detection" in text
    # progress (on by default): photos with faces in the postfix, and the steps of the batch
    assert "photo" in res.output and "faces=" in res.output
    assert "batch 1/1" in res.output and "2/2" in res.output


def _row(status: str, **extra) -> dict:
    return dict(face_index=extra.pop("face_index", 0), status=status, **extra)


def test_render_page_rounds_numbers_and_explains_fallbacks(tmp_path):
    for name in ("in.png", "out.png", "curves.png"):
        (tmp_path / name).write_bytes(b"")
    trail = [{"step": "method", "identity": {"dlib": 0.4985123456789}, "same": True},
             {"step": "blur", "identity": {"dlib": 0.51351234}, "same": True},
             {"step": "mask", "identity": {"dlib": 0.43791234}, "same": True}]
    faces = [
        _row("done", face_index=0, method="falco", neighbour=3,
             losses={"id": 0.15661234567890123, "attr": 25.234567890123, "total": 4.0891234567891},
             guard={"verdict": "safe", "identity": {"dlib": 0.7264}, "trail": trail[:1]}),
        _row("fallback", face_index=1, method="falco", fallback="mask", reason="privacy guard: <why>",
             guard={"verdict": "fallback", "covered_by": "mask", "last_resort": True, "trail": trail}),
        _row("missed", face_index=2, method="guard-fallback", fallback="blur"),
    ]
    text = render_page(tmp_path / "in.png", tmp_path / "out.png", faces, tmp_path, tmp_path / "curves.png",
                       tiny=False, page_dir=tmp_path)
    assert not LONG_NUMBER.search(text)
    assert "<td>0.1566</td>" in text and "<td>25.23</td>" in text and "<td>4.089</td>" in text
    assert "<td>0.4985</td>" in text and "<td>0.5135</td>" in text
    assert "face 1: fallback" in text and "a solid mask (blur still matched)" in text
    assert "privacy guard: &lt;why&gt;" in text and "<why>" not in text
    assert "covered by blur" in text  # the trail's steps, and the missed face
    assert "face 2: missed" in text and "the privacy guard found it and covered it" in text
    assert 'src="in.png"' in text and 'src="curves.png"' in text
