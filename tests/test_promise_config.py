"""The ``config`` promises: what ``falco anonymize`` hands to the run, what AnonymizeConfig
accepts and refuses, and how older manifests' settings are read back.

Written to kill the mutants ``scripts/mutants.sh config`` left alive. Every expectation comes
from outside the code under test: the option's documented default or meaning (``--help``,
README.md), the documented bounds (``--crf`` >= 0, ``--sequence-fps`` in (0, 1000],
``--region-feather`` in [0, 0.5], the region names of :mod:`falco.faces.regions`), and the
hand-read contents of ``tests/data/anonymize_config_flat_v0.json``. Fast: no models, no runs
(``run_anonymize`` is replaced by a spy).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from falco.cli.anonymize import _option_value, parse_method_options
from falco.config import AnonymizeConfig, anonymize_config_from_dict
from falco.errors import InputError
from falco.latent.optimise import FalcoParams
from tests.conftest import anonymize_cli_configs

REPO = Path(__file__).resolve().parents[1]


def _cli_cfg(monkeypatch, tmp_path, *flags) -> AnonymizeConfig:
    code, seen = anonymize_cli_configs(monkeypatch, tmp_path, *flags)
    assert code == 0 and len(seen) == 1
    return seen[0]


def _cfg(**kw) -> AnonymizeConfig:
    return AnonymizeConfig(input=Path("in"), out=Path("out"), **kw)


# --- the CLI: the newer flags reach the config -------------------------------------------

def test_cli_defaults_of_the_video_sequence_and_region_flags(monkeypatch, tmp_path):
    """The defaults `falco anonymize --help` and README.md document."""
    cfg = _cli_cfg(monkeypatch, tmp_path)
    assert (cfg.codec, cfg.crf, cfg.keep_metadata, cfg.detect_every, cfg.video_steps, cfg.video_segment) == \
        (None, 18, False, 1, 10, 120)
    assert (cfg.merge_tracks, cfg.same_identity_across_videos, cfg.sequence, cfg.sequence_fps) == \
        (False, False, False, 25.0)
    assert (cfg.keep, cfg.change, cfg.region_feather, cfg.region_masks) == (None, None, 0.02, "auto")
    assert cfg.falco.layers == (3, 8) and cfg.falco.region_focus == 0.75


def test_cli_video_and_sequence_flags_reach_the_config(monkeypatch, tmp_path):
    cfg = _cli_cfg(monkeypatch, tmp_path, "--codec", "libvpx-vp9", "--crf", "30", "--keep-metadata",
                   "--detect-every", "3", "--video-steps", "5", "--video-segment", "60", "--merge-tracks",
                   "--same-identity-across-videos", "--sequence", "--sequence-fps", "12.5")
    assert (cfg.codec, cfg.crf, cfg.keep_metadata, cfg.detect_every, cfg.video_steps, cfg.video_segment) == \
        ("libvpx-vp9", 30, True, 3, 5, 60)
    assert (cfg.merge_tracks, cfg.same_identity_across_videos, cfg.sequence, cfg.sequence_fps) == \
        (True, True, True, 12.5)


def test_cli_region_flags_reach_the_config(monkeypatch, tmp_path):
    cfg = _cli_cfg(monkeypatch, tmp_path, "--keep", "eyes-brows", "--region-feather", "0.1",
                   "--region-masks", "landmarks", "--region-focus", "0.3")
    assert (cfg.keep, cfg.change, cfg.region_feather, cfg.region_masks) == (("eyes-brows",), None, 0.1, "landmarks")
    assert cfg.falco.region_focus == 0.3
    cfg = _cli_cfg(monkeypatch, tmp_path, "--change", "Mouth,LIPS", "--region-masks", "parsing")
    assert (cfg.keep, cfg.change, cfg.region_masks) == (None, ("mouth", "lips"), "parsing")


def test_cli_change_shape_frees_the_coarse_layers(monkeypatch, tmp_path):
    """--change-shape: START becomes 0 (README: layers 0..2 are optimised too)."""
    assert _cli_cfg(monkeypatch, tmp_path, "--change-shape").falco.layers == (0, 8)
    assert _cli_cfg(monkeypatch, tmp_path, "--change-shape", "--layers", "4:7").falco.layers == (0, 7)


def test_cli_method_specific_flags_become_method_options(monkeypatch, tmp_path):
    """--pixelate-preset -> preset, --pixelate-block-size -> block_size, --anonygan-condition -> condition."""
    cfg = _cli_cfg(monkeypatch, tmp_path, "--method", "pixelate", "--pixelate-preset", "ciagan-8x8")
    assert cfg.method_options == {"preset": "ciagan-8x8"}
    cfg = _cli_cfg(monkeypatch, tmp_path, "--method", "pixelate", "--pixelate-block-size", "12")
    assert cfg.method_options == {"block_size": 12}
    cond = tmp_path / "fake.png"
    cfg = _cli_cfg(monkeypatch, tmp_path, "--method", "anonygan", "--anonygan-condition", str(cond))
    assert cfg.method_options == {"condition": cond}
    cfg = _cli_cfg(monkeypatch, tmp_path, "--method", "blur", "--method-option", "feather=0.1",
                   "--method-option", "expr=a=b", "--method-option", "flag=TRUE")
    assert cfg.method_options == {"feather": 0.1, "expr": "a=b", "flag": True}


def test_cli_refuses_both_presets(monkeypatch, tmp_path):
    code, seen = anonymize_cli_configs(monkeypatch, tmp_path, "--blur-preset", "heavy", "--pixelate-preset", "ciagan-8x8")
    assert code == 2 and seen == []


# --- --method-option KEY=VALUE -----------------------------------------------------------

def test_method_option_values_are_converted():
    """Integers, floats, true/false and none are converted (any case), anything else stays a string."""
    assert _option_value("true") is True and _option_value("True") is True and _option_value("TRUE") is True
    assert _option_value("false") is False and _option_value("False") is False
    assert _option_value("none") is None and _option_value("None") is None and _option_value("NONE") is None
    assert _option_value("3") == 3 and isinstance(_option_value("3"), int)
    assert _option_value("-7") == -7 and isinstance(_option_value("-7"), int)
    assert _option_value("0.5") == 0.5 and isinstance(_option_value("0.5"), float)
    assert _option_value("1e-3") == 0.001
    assert _option_value("heavy") == "heavy" and _option_value("ciagan-8x8") == "ciagan-8x8"
    assert _option_value("") == ""


def test_method_option_pairs():
    assert parse_method_options([]) == {}
    assert parse_method_options(["feather=0.1", " blocks = 8 ", "name=heavy", "on=false", "x=none"]) == \
        {"feather": 0.1, "blocks": 8, "name": "heavy", "on": False, "x": None}
    # the value is everything after the first '='
    assert parse_method_options(["expr=a=b"]) == {"expr": "a=b"}
    assert parse_method_options(("k=",)) == {"k": ""}
    for bad in ("novalue", "=3", "2x=1", "a-b=1", " =1"):
        with pytest.raises(InputError):
            parse_method_options([bad])


# --- AnonymizeConfig: video and sequence bounds, output choices --------------------------

@pytest.mark.parametrize("name,low", [("crf", 0), ("detect_every", 1), ("video_steps", 0), ("video_segment", 1)])
def test_video_integers_have_their_documented_lower_bound(name, low):
    """--crf >= 0, --detect-every >= 1, --video-steps >= 0, --video-segment >= 1 (as --help's min=)."""
    assert getattr(_cfg(**{name: low}), name) == low
    assert getattr(_cfg(**{name: low + 7}), name) == low + 7
    for bad in (low - 1, -5, True, False, 2.0, 1.5, "3", None):
        with pytest.raises(InputError):
            _cfg(**{name: bad})


def test_sequence_fps_is_a_number_in_0_1000():
    for ok in (0.5, 1, 24, 29.97, 1000, 1000.0, 0.001):
        assert _cfg(sequence_fps=ok).sequence_fps == ok
    for bad in (0, 0.0, -1, -0.5, 1000.5, 1001, 1e9, True, False, "25", None):
        with pytest.raises(InputError):
            _cfg(sequence_fps=bad)


def test_output_format_and_export_choices_are_checked():
    assert _cfg(format="png").format == "png" and _cfg(format=None).format is None
    assert _cfg(export_detections="coco").export_detections == "coco"
    for bad in ("gif", "PNG", "bmp"):
        with pytest.raises(InputError):
            _cfg(format=bad)
    for bad in ("xml", "COCO", "yolo"):
        with pytest.raises(InputError):
            _cfg(export_detections=bad)


# --- AnonymizeConfig: --keep / --change ---------------------------------------------------

def test_keep_and_change_are_stored_as_tuples_of_lower_case_names():
    assert _cfg(keep="Eyes, BROWS").keep == ("eyes", "brows")
    assert _cfg(keep=["Eyes", " hair-neck "]).keep == ("eyes", "hair-neck")
    assert _cfg(keep=("nose",)).keep == ("nose",)
    assert _cfg(keep="nothing").keep == ("nothing",)
    assert _cfg(change="MOUTH").change == ("mouth",)
    assert _cfg(change=["lips", "Mouth-Lips"]).change == ("lips", "mouth-lips")
    cfg = _cfg(change="eyes")
    assert cfg.keep is None and cfg.change == ("eyes",) and type(cfg.change) is tuple
    cfg = _cfg(keep=["skin"])
    assert cfg.change is None and cfg.keep == ("skin",) and type(cfg.keep) is tuple
    cfg = _cfg()
    assert cfg.keep is None and cfg.change is None


def test_keep_and_change_refuse_what_is_not_region_names():
    # a name that is not a string, even an unhashable one, is an InputError, not a crash
    for bad in ((), [], "eyes,", ",", ("eyes", 3), [None], ["eyes", ["hair"]], [{"eyes": 1}], "eyes,,nose",
                "ears,tail", "forehead"):
        for name in ("keep", "change"):
            with pytest.raises(InputError):
                _cfg(**{name: bad})


def test_keep_and_change_exclude_each_other():
    with pytest.raises(InputError):
        _cfg(keep="eyes", change="mouth")
    with pytest.raises(InputError):
        _cfg(keep="nothing", change="nothing")


def test_region_feather_is_a_fraction_in_0_half():
    for ok in (0, 0.0, 0.02, 0.25, 0.5):
        assert _cfg(region_feather=ok).region_feather == ok
    for bad in (-0.01, 0.51, 0.6, 1.0, 1.5, True, False, "0.1", None):
        with pytest.raises(InputError):
            _cfg(region_feather=bad)


def test_region_masks_landmarks_cannot_draw_parser_parts():
    """README: hair, neck, ears, glasses, hat and cloth need the face parser; the other parts,
    their groups and everything/nothing are drawn from the 68 landmarks."""
    for name in ("keep", "change"):
        for parser_only in ("hair", "neck", "ears", "glasses", "hat", "cloth", "hair-neck", "eyes,hair"):
            with pytest.raises(InputError):
                _cfg(region_masks="landmarks", **{name: parser_only})
            assert getattr(_cfg(region_masks="auto", **{name: parser_only}), name) is not None
            assert getattr(_cfg(region_masks="parsing", **{name: parser_only}), name) is not None
        for drawable in ("eyes", "skin,nose", "eyes-brows", "mouth-lips", "everything", "nothing"):
            assert getattr(_cfg(region_masks="landmarks", **{name: drawable}), name) is not None
    assert _cfg(region_masks="landmarks").region_masks == "landmarks"
    for bad in ("LANDMARKS", "parser", ""):
        with pytest.raises(InputError):
            _cfg(region_masks=bad)


# --- older manifests' settings -------------------------------------------------------------

def test_the_flat_v0_manifest_reads_back_as_written():
    """tests/data/anonymize_config_flat_v0.json: FALCO's settings at the top level, values read by hand."""
    data = json.loads((REPO / "tests" / "data" / "anonymize_config_flat_v0.json").read_text())["config"]
    cfg = anonymize_config_from_dict(data)
    assert cfg.falco == FalcoParams(m=0.0, steps=4, lr=0.01, lambda_id=10.0, lambda_attr=0.1, layers=(3, 8),
                                    amp=None, num_fp16_res=4, fused_modconv=True, channels_last=False,
                                    compile=None, loss_resolution=None)
    assert type(cfg.falco.layers) is tuple and cfg.falco.lr_milestones == (0.75, 0.9)
    assert cfg.input == Path("../shared/data/faces") and isinstance(cfg.input, Path)
    assert cfg.out == Path("/tmp/golden/before/out-falco") and isinstance(cfg.out, Path)
    assert cfg.models == Path("/tmp/golden/before/models") and isinstance(cfg.models, Path)
    assert cfg.bank is None and cfg.keep_identity == () and cfg.keep is None and cfg.change is None
    assert (cfg.method, cfg.bank_size, cfg.batch_size, cfg.detector, cfg.device, cfg.format, cfg.guard) == \
        ("falco", 64, 8, "hog", "auto", "png", "enforce")
    assert (cfg.max_pixels, cfg.on_fail, cfg.progress, cfg.quality, cfg.reuse, cfg.save_crops, cfg.seed) == \
        (150000000, "blur", False, 95, True, True, 0)
    assert (cfg.sidecar, cfg.upsample, cfg.method_options, cfg.export_detections) == (False, 1, {}, None)
    # settings the v0 file does not have take their defaults
    assert (cfg.crf, cfg.sequence, cfg.sequence_fps, cfg.region_masks) == (18, False, 25.0, "auto")


def test_a_nested_manifest_reads_back_as_written():
    data = {
        "input": "photos", "out": "anon", "models": "m", "bank": "bank/", "method": "falco", "seed": 3,
        "falco": {"steps": 7, "layers": [2, 6], "lr_milestones": [0.5], "region_focus": 0.4, "amp": "bf16"},
        "keep_identity": ["me.jpg", "you.png"], "keep": ["eyes", "brows"], "crf": 22, "sequence_fps": 30.0,
        "method_settings": {"anything": 1}, "guard_settings": {"mode": "enforce"},
        # a flat key next to the nested form is not FALCO's setting
        "steps": 99,
    }
    cfg = anonymize_config_from_dict(data)
    assert cfg.falco == FalcoParams(steps=7, layers=(2, 6), lr_milestones=(0.5,), region_focus=0.4, amp="bf16")
    assert type(cfg.falco.layers) is tuple and type(cfg.falco.lr_milestones) is tuple
    assert (cfg.input, cfg.out, cfg.models, cfg.bank) == (Path("photos"), Path("anon"), Path("m"), Path("bank"))
    assert all(isinstance(p, Path) for p in (cfg.input, cfg.out, cfg.models, cfg.bank))
    assert cfg.keep_identity == (Path("me.jpg"), Path("you.png"))
    assert all(isinstance(p, Path) for p in cfg.keep_identity)
    assert cfg.keep == ("eyes", "brows") and cfg.change is None
    assert (cfg.seed, cfg.crf, cfg.sequence_fps) == (3, 22, 30.0)
    cfg = anonymize_config_from_dict({"input": "a", "out": "b", "change": ["mouth"], "keep_identity": None})
    assert cfg.change == ("mouth",) and cfg.keep is None and cfg.keep_identity == ()
    assert cfg.falco == FalcoParams() and cfg.models is None and cfg.bank is None


def test_an_as_dict_round_trip_gives_the_same_config():
    from falco.config import as_dict

    cfg = _cfg(models=Path("m"), bank=Path("b"), falco=FalcoParams(steps=3, layers=(1, 5), lr_milestones=(0.6,)),
               keep_identity=(Path("me.jpg"),), change=("nose", "eyes"), region_masks="landmarks", crf=0,
               detect_every=2, video_steps=0, video_segment=1, sequence=True, sequence_fps=1000)
    assert anonymize_config_from_dict(json.loads(json.dumps(as_dict(cfg)))) == cfg
