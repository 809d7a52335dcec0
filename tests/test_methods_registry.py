"""One registry for every method; one config whose choices are checked where they are interpreted.

A method added from outside the package (a subclass plus ``register_method``) runs through
``falco anonymize``'s library path with all its hooks, without touching the command: the proof
that the command has no method-specific code.
"""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from falco.config import AnonymizeConfig, anonymize_config_from_dict, as_dict
from falco.errors import InputError
from falco.latent.optimise import FalcoParams
from falco.methods import Anonymizer, available_methods, get_anonymizer, method_class, register_method
from falco.methods import registry as registry_mod
from falco.methods.cover import ON_FAIL, fallback
from falco.run.anonymize import run_anonymize
from falco.run.image_files import load_image
from falco.run.manifest import RunManifest
from tests.conftest import shared_path

REPO = Path(__file__).resolve().parents[1]
BUILT_IN = {"falco", "blur", "pixelate", "mask", "ciagan", "deepprivacy", "anonygan"}


def test_available_methods_lists_falco_and_the_five_baselines():
    assert BUILT_IN <= set(available_methods())
    assert available_methods() == sorted(available_methods())


@pytest.mark.parametrize("name", sorted(BUILT_IN))
def test_every_built_in_method_is_an_anonymizer_class_with_its_name(name):
    cls = method_class(name)
    assert issubclass(cls, Anonymizer) and cls.name == name


def test_the_methods_declare_the_models_they_load():
    assert method_class("falco").roles == ("generator", "encoder", "identity", "attributes")
    assert method_class("falco").can_redo
    for name in ("blur", "pixelate", "mask"):
        assert method_class(name).roles == () and not method_class(name).can_redo


def test_unknown_method_lists_the_valid_ones():
    with pytest.raises(InputError, match="valid methods: .*blur.*falco"):
        method_class("nope")


def _string_constants(path: Path) -> set[str]:
    return {n.value for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Constant)
            and isinstance(n.value, str)}


def test_the_anonymize_command_names_no_method():
    """No method-specific branch: no method's name appears in the command's code at all."""
    for module in ("falco/run/anonymize.py", "falco/cli/anonymize.py"):
        names = _string_constants(REPO / module) & {"ciagan", "deepprivacy", "anonygan"}  # 'falco' is also the package
        assert not names, f"{module} names methods {names}"
    tree = ast.parse((REPO / "falco/run/anonymize.py").read_text())
    compared = [n for n in ast.walk(tree) if isinstance(n, ast.Compare)
                and any(isinstance(c, ast.Attribute) and c.attr == "method" for c in [n.left, *n.comparators])]
    assert not compared, "run/anonymize.py compares cfg.method with something"
    assert "METHODS" not in {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}


def test_on_fail_choices_are_defined_once():
    hits = [p for p in (REPO / "falco").rglob("*.py")
            if '("blur", "pixelate", "mask", "skip")' in p.read_text()]
    assert hits == [] and ON_FAIL == ("blur", "pixelate", "mask", "skip")


# --- a method from outside the package, with every hook --------------------------------------

class _Stamp(Anonymizer):
    """Masks each face; reports a field, a crop and a per-photo file through the hooks."""

    name = "stamp"

    def __init__(self, shade: int = 128) -> None:
        self.shade = int(shade)
        self.callbacks: list = []

    def settings(self) -> dict:
        return {"method": self.name, "shade": self.shade}

    def process(self, faces):
        return [{"size": f.quad_size} for f in faces]

    def apply(self, photo, faces, results):
        out = photo
        for face in faces:
            out = fallback(out, face, "mask")
        return out.copy(), [{"method": self.name, "status": "done"} for _ in faces]

    def face_fields(self, result):
        return {"stamp_size": result["size"]}

    def crops(self, face, result):
        return {"stamped": np.full((8, 8, 3), self.shade, np.uint8)}

    def write_outputs(self, out, key, faces, results):
        rel = f"stamps/{key}.json"
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_text(json.dumps([r["size"] for r in results]))
        return {"stamps": rel}, [{"stamp_file": rel, "stamp_index": i} for i in range(len(faces))]

    def set_step_callback(self, on_step):
        self.callbacks.append(on_step)


@pytest.fixture()
def stamp(monkeypatch):
    monkeypatch.setattr(registry_mod, "_REGISTERED", {})
    register_method("stamp", _Stamp)
    return _Stamp


def test_a_registered_method_runs_with_all_its_hooks(stamp, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(shared_path("data", "faces", "2008_001322.jpg"), src / "three.jpg")
    out = tmp_path / "out"
    summary = run_anonymize(AnonymizeConfig(input=src, out=out, method="stamp", method_options={"shade": 7},
                                            format="png", save_crops=True, guard="off", progress=False),
                            echo=lambda *_: None)
    assert summary.done == 1 and summary.faces == 3
    with RunManifest(out) as m:
        faces, run, inputs = m.faces(), m.runs()[-1], m.inputs()
    assert run["config"]["method_settings"] == {"method": "stamp", "shade": 7}
    assert inputs[0]["outputs"]["stamps"] == "stamps/three.jpg.json"
    sizes = json.loads((out / "stamps/three.jpg.json").read_text())
    assert sorted(f["stamp_size"] for f in faces) == sorted(sizes) and len(sizes) == 3
    assert sorted(f["stamp_index"] for f in faces) == [0, 1, 2]
    for f in faces:
        assert set(f["crops"]) == {"real", "stamped"}
        assert (load_image(out / f["crops"]["stamped"]) == 7).all()
    before, after = load_image(src / "three.jpg"), load_image(out / "three.png")
    assert before.shape == after.shape and (before != after).any()  # the method's apply wrote the photo


def test_a_method_option_it_does_not_take_is_one_clear_error(stamp, tmp_path):
    with pytest.raises(InputError, match=r"'stamp' does not take option\(s\) 'colour'; it takes: shade"):
        method_class("stamp").from_config(AnonymizeConfig(input=tmp_path, out=tmp_path / "o", method="stamp",
                                                          method_options={"colour": 1}), device=None, echo=print)


def test_a_plain_factory_can_be_registered_too(monkeypatch, tmp_path):
    monkeypatch.setattr(registry_mod, "_REGISTERED", {})
    register_method("grey", lambda shade=1: _Stamp(shade))
    built = method_class("grey").from_config(AnonymizeConfig(input=tmp_path, out=tmp_path / "o", method="grey",
                                                             method_options={"shade": 3}), device=None, echo=print)
    assert isinstance(built, _Stamp) and built.shade == 3
    assert get_anonymizer("grey").shade == 1


# --- one config -----------------------------------------------------------------------------

@pytest.mark.parametrize("field, value, message", [
    ("method", "nope", "--method must be one of ([a-z]+, )*blur, ciagan, deepprivacy, falco, mask, pixelate(, [a-z]+)*, got 'nope'"),
    ("on_fail", "melt", "--on-fail must be one of blur, pixelate, mask, skip"),
    ("guard", "maybe", "--guard must be one of off, warn, enforce"),
    ("format", "gif", "--format must be one of jpeg, jpg, png, webp"),
    ("export_detections", "yolo", "--export-detections must be 'coco'"),
])
def test_every_choice_is_checked_when_the_config_is_built(tmp_path, field, value, message):
    with pytest.raises(InputError, match=message):
        AnonymizeConfig(input=tmp_path, out=tmp_path / "o", **{field: value})


def test_falco_params_are_nested_and_checked(tmp_path):
    cfg = AnonymizeConfig(input=tmp_path, out=tmp_path / "o", falco=FalcoParams(m=0.5, steps=7))
    assert cfg.falco.m == 0.5 and cfg.falco.steps == 7 and cfg.falco.layers == (3, 8)
    with pytest.raises(InputError, match="amp must be"):
        FalcoParams(amp="fp8")
    with pytest.raises(InputError, match="falco must be FalcoParams"):
        AnonymizeConfig(input=tmp_path, out=tmp_path / "o", falco={"m": 0.5})


def test_a_manifest_config_of_the_flat_layout_still_loads():
    """The settings recorded by falco 0.1.0 before FalcoParams was nested (a real manifest's row)."""
    data = json.loads((REPO / "tests" / "data" / "anonymize_config_flat_v0.json").read_text())["config"]
    assert "falco" not in data and data["steps"] == 4
    cfg = anonymize_config_from_dict(data)
    assert cfg.falco == FalcoParams(steps=4, compile=None)
    assert cfg.bank_size == 64 and cfg.method == "falco" and cfg.format == "png" and cfg.save_crops
    assert cfg.models == Path(data["models"]) and cfg.keep_identity == ()


def test_a_config_round_trips_through_its_manifest_form(tmp_path):
    cfg = AnonymizeConfig(input=tmp_path, out=tmp_path / "o", method="blur", method_options={"preset": "9"},
                          falco=FalcoParams(m=0.3, layers=(2, 6), amp="bf16"), keep_identity=(tmp_path / "me.jpg",),
                          bank=tmp_path / "bank", reuse=False, sidecar=True)
    data = json.loads(json.dumps(as_dict(cfg)))
    assert data["falco"]["layers"] == [2, 6] and data["keep_identity"] == [str(tmp_path / "me.jpg")]
    assert anonymize_config_from_dict(data) == cfg


def test_method_option_flags_become_typed_keyword_arguments():
    from falco.cli.anonymize import parse_method_options

    assert parse_method_options(["feather=0.1", "preset=9", "name=x", "on=true", "off=False", "z=none"]) == {
        "feather": 0.1, "preset": 9, "name": "x", "on": True, "off": False, "z": None}
    with pytest.raises(InputError, match="KEY=VALUE"):
        parse_method_options(["feather"])
