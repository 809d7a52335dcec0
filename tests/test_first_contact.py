"""What a new user meets first: every command that writes, run with relative paths from the
folder the user is in; one-line errors; help text; Ctrl-C; the lock file.

These run the real command line (``falco.cli.main``, or ``python -m falco`` where a process
must be interrupted) with ``cwd`` set to a temporary folder and every path relative to it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from falco.cli import main
from falco.run.image_files import load_image
from falco.run.manifest import RunManifest
from tests.conftest import shared_path

PHOTOS = ("2008_001322.jpg", "2008_002506.jpg")  # small photos with 1 and 2 faces


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    """Run ``falco ARGS`` in this process; returns (exit status, stdout, stderr)."""
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture()
def workdir(tmp_path, monkeypatch) -> Path:
    """A user's folder with two photos in ``photos/``, set as the working directory."""
    faces = shared_path("data", "faces")
    (tmp_path / "photos").mkdir()
    for name in PHOTOS:
        shutil.copy(faces / name, tmp_path / "photos" / name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FALCO_HOME", str(tmp_path / "home"))
    return tmp_path


@pytest.fixture()
def rel_models(workdir, tiny_models) -> str:
    """The session's tiny model set, copied under a relative path."""
    shutil.copytree(tiny_models, workdir / "models")
    return "models"


def test_tiny_set_written_through_a_relative_path_verifies(workdir, capsys):
    code, out, err = run_cli(capsys, "models", "tiny", "relmodels")
    assert code == 0, err
    manifest = json.loads((workdir / "relmodels" / "manifest.json").read_text())
    assert manifest["kind"] == "tiny-random" and len(manifest["files"]) >= 4
    for record in manifest["files"].values():
        assert (workdir / "relmodels" / record["filename"]).is_file()
    assert not (workdir / "relmodels" / "relmodels").exists()
    code, out, err = run_cli(capsys, "models", "verify", "--models", "relmodels")
    assert code == 0, out + err
    code, out, err = run_cli(capsys, "models", "tiny", "relmodels")  # re-running replaces it cleanly
    assert code == 0, err


@pytest.mark.slow
def test_every_writing_command_works_with_relative_paths(workdir, rel_models, capsys):
    code, _, err = run_cli(capsys, "invert", "photos", "--out", "inv", "--models", rel_models, "--device", "cpu",
                           "--no-progress")
    assert code == 0, err
    assert len(list((workdir / "inv" / "codes").glob("*.safetensors"))) == len(PHOTOS)

    code, _, err = run_cli(capsys, "bank", "build", "--out", "bank", "--num", "16", "--models", rel_models,
                           "--device", "cpu", "--no-progress")
    assert code == 0, err
    assert (workdir / "bank" / "manifest.json").is_file()

    code, _, err = run_cli(capsys, "anonymize", "photos", "--out", "anon", "--bank", "bank", "--steps", "1",
                           "--models", rel_models, "--device", "cpu", "--guard", "off", "--no-progress")
    assert code == 0, err
    code, _, err = run_cli(capsys, "anonymize", "photos/" + PHOTOS[0], "--out", "blur", "--method", "blur",
                           "--models", rel_models, "--device", "cpu", "--no-progress")
    assert code == 0, err
    for name in PHOTOS:
        assert load_image(workdir / "anon" / name).shape == load_image(workdir / "photos" / name).shape
    assert (workdir / "blur" / PHOTOS[0]).is_file()

    code, _, err = run_cli(capsys, "eval-attributes", "--real", "photos", "--anon", "blur", "--out", "report",
                           "--detectors", "hog", "--recognizers", "dlib", "--classifiers", "landmarks", "--no-fid",
                           "--models", rel_models, "--device", "cpu")
    assert code == 0, err
    assert (workdir / "report" / "report.json").is_file() and (workdir / "report" / "report.html").is_file()
    for folder in ("inv", "bank", "anon", "blur", "report"):  # nothing written anywhere but where asked
        assert not (workdir / folder / folder).exists()
        assert not list((workdir / folder).rglob(".falco*.lock")), f"lock file left in {folder}"


@pytest.mark.parametrize("command", ["invert", "anonymize", "bank", "eval-attributes"])
def test_unwritable_out_is_one_line_and_exit_2(workdir, rel_models, capsys, command):
    (workdir / "a-file").write_text("not a folder")
    for out in ("/proc/falco-cannot-write/out", "a-file", "a-file/sub"):
        args = {"invert": ["invert", "photos"], "anonymize": ["anonymize", "photos", "--method", "blur"],
                "bank": ["bank", "build", "--num", "4"],
                "eval-attributes": ["eval-attributes", "--real", "photos", "--anon", "photos"]}[command]
        code, stdout, err = run_cli(capsys, *args, "--out", out, "--models", rel_models, "--device", "cpu",
                                    "--no-progress")
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2, (out, err)
        assert len(lines) == 1 and lines[0].startswith("error: ") and out in lines[0], (out, err)
        assert "Traceback" not in err


def test_a_run_that_fails_early_leaves_no_folder(workdir, rel_models, capsys):
    code, _, err = run_cli(capsys, "anonymize", "photos", "--out", "anon", "--models", "no-models",
                           "--device", "cpu", "--no-progress")
    assert code == 2 and "falco models download" in err
    assert not (workdir / "anon").exists(), "a failed early run left its output folder behind"
    code, _, err = run_cli(capsys, "invert", "photos", "--out", "inv", "--models", "no-models", "--device", "cpu")
    assert code == 2 and not (workdir / "inv").exists()
    code, _, err = run_cli(capsys, "anonymize", "photos", "--out", "anon", "--bank", "no-bank", "--models", rel_models,
                           "--device", "cpu", "--no-progress")
    assert code == 2 and "no-bank" in err and not (workdir / "anon").exists()


def test_failed_input_is_reported_once_with_its_path(workdir, rel_models, capsys, caplog):
    data = (workdir / "photos" / PHOTOS[0]).read_bytes()
    (workdir / "photos" / "broken.jpg").write_bytes(data[:2000])
    code, out, err = run_cli(capsys, "anonymize", "photos", "--out", "anon", "--method", "blur",
                             "--models", rel_models, "--device", "cpu", "--no-progress")
    assert code == 1
    text = "\n".join([out, err, *(r.getMessage() for r in caplog.records)])  # the runner logs to stderr
    assert text.count("broken.jpg") == 1, text
    line = next(line for line in text.splitlines() if "broken.jpg" in line)
    assert line.startswith("failed: photos/broken.jpg: ") and "truncated" in line
    assert str(workdir) not in line  # the path as the user typed it, not absolute
    with RunManifest(workdir / "anon") as m:
        failed = {r["source"]: r["reason"] for r in m.inputs() if r["status"] == "failed"}
    assert list(failed) == ["broken.jpg"] and failed["broken.jpg"].startswith("broken.jpg: corrupt or truncated")


def test_max_pixels_option_refuses_and_admits(workdir, rel_models, capsys, caplog):
    h, w = load_image(workdir / "photos" / PHOTOS[0]).shape[:2]
    code, out, err = run_cli(capsys, "anonymize", "photos/" + PHOTOS[0], "--out", "small", "--method", "blur",
                             "--max-pixels", str(h * w - 1), "--models", rel_models, "--device", "cpu",
                             "--no-progress")
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert code == 1 and "--max-pixels" in logged and "too large" in logged, err
    code, out, err = run_cli(capsys, "anonymize", "photos/" + PHOTOS[0], "--out", "small", "--method", "blur",
                             "--max-pixels", str(h * w), "--models", rel_models, "--device", "cpu",
                             "--no-progress")
    assert code == 0, err
    assert (workdir / "small" / PHOTOS[0]).is_file()


def test_list_file_of_absolute_paths_mirrors_relative_to_their_common_root(workdir, rel_models, capsys):
    (workdir / "photos" / "sub").mkdir()
    shutil.move(workdir / "photos" / PHOTOS[1], workdir / "photos" / "sub" / PHOTOS[1])
    lst = workdir / "list.txt"
    lst.write_text(f"{workdir / 'photos' / PHOTOS[0]}\n{workdir / 'photos' / 'sub' / PHOTOS[1]}\n")
    code, _, err = run_cli(capsys, "anonymize", "list.txt", "--out", "out", "--method", "blur",
                           "--models", rel_models, "--device", "cpu", "--no-progress")
    assert code == 0, err
    written = sorted(p.relative_to(workdir / "out").as_posix() for p in (workdir / "out").rglob("*.jpg"))
    assert written == sorted([PHOTOS[0], f"sub/{PHOTOS[1]}"])


@pytest.mark.parametrize("command", [["invert"], ["anonymize"], ["demo"], ["eval-attributes"], ["bank", "build"],
                                     ["models", "list"], ["models", "tiny"]])
def test_help_is_plain_and_complete(capsys, command):
    code, out, err = run_cli(capsys, *command, "--help")
    assert code == 0
    assert "<bool>" not in out and "{input}" not in out and "╭" not in out
    if command[0] in ("invert", "anonymize"):
        assert re.search(r"Usage: falco \w+ \[OPTIONS\] INPUT", out), out
        assert "--max-pixels" in out
    if "--models" in out:
        assert "~/.cache/falco/models" in " ".join(out.split()), out
    if "--no-progress" in out:
        assert re.search(r"--no-progress\s+Hide", out), out


def test_readme_commands_exist_as_written():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "| falco models verify" not in readme  # verify does not read stdin


@pytest.mark.slow  # a falco process, interrupted
def test_ctrl_c_says_how_to_resume_and_releases_the_lock(workdir, rel_models):
    out = workdir / "anon"
    cmd = [sys.executable, "-m", "falco", "anonymize", "photos", "--out", "anon", "--bank-size", "64",
           "--steps", "400", "--models", rel_models, "--device", "cpu", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None and not (out / "bank" / "manifest.json").exists():
            time.sleep(0.2)
        time.sleep(1.0)  # well into the optimisation of the first batch
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr
    assert "interrupted; re-run the same command to resume" in stderr
    assert "Traceback" not in stderr
    assert not (out / ".falco.lock").exists()
