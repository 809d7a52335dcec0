"""A reference FALCO (chi0tzp/FALCO) workspace read, imported as a bank and anonymized.

The workspace is written here the way the reference's scripts write it, on the tiny model set
(64 px, w_dim 64, 10 ws): create_fake_dataset.py's hash folders (``latent_code_w+.pt`` saved
with ``requires_grad``, ``latent_code_s.pt`` saved from the GPU, min-max rescaled JPEGs, per-fake
and stacked features, ``latent_code_hashes.txt`` and ``args.json``), pair_nn.py's maps and
invert.py's codes, each saved straight from a GPU batch: a view of the batch (the file holds
the whole batch), storage tagged ``cuda:0``, ``requires_grad=True``. The ``cuda:0`` tags are
written by saving on the CPU and rewriting the tag inside ``data.pkl``, exactly the bytes a
save from the GPU would hold there.
"""

from __future__ import annotations

import io
import json
import shutil
import zipfile
from hashlib import sha1
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

from falco.bank import Bank
from falco.bank.writer import render_quantized
from falco.bank.features import load_extractor
from falco.cli import app
from falco.compat.falco_anonymize import anonymize_workspace
from falco.compat.falco_bank import _workspace_features
from falco.compat.falco_ref import read_workspace
from falco.errors import FalcoError, InputError
from falco.latent.images import to_uint8
from falco.latent.optimise import FalcoParams, mix_codes
from falco.models.zoo import load_role
from falco.pretrained.modelset import resolve_model

GAN, PSI, N_FAKES = "stylegan2_ffhq1024", 0.7, 12
REALS = [f"{i}.jpg" for i in (0, 1, 2, 3, 4, 5)]  # CelebA-HQ names; 5.jpg is paired but not inverted
INVERTED = REALS[:5]
FAKE_DIR = f"datasets/fake/fake_dataset_{GAN}-{PSI}-{N_FAKES}-FaRL-ArcFace"


# ----------------------------------------------------------------------------- writing FALCO's files
def save_from_gpu(obj, path: Path) -> None:
    """``torch.save`` as on a GPU: every storage's location tag is ``'cuda:0'``.

    Saved on the CPU, then the pickled tag ``'cpu'`` (protocol 2: BINUNICODE) in ``data.pkl``
    is replaced by ``'cuda:0'``; the other records are copied as they are.
    """
    buf = io.BytesIO()
    torch.save(obj, buf)
    cpu, cuda = b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0"
    with zipfile.ZipFile(buf) as zin, zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename.endswith("/data.pkl"):
                assert cpu in data
                data = data.replace(cpu, cuda)
            zout.writestr(info, data)


def tensor2image(img: torch.Tensor) -> Image.Image:
    """The reference's ``tensor2image(adaptive=True)``: min-max over the tensor, truncated to uint8."""
    t = img.squeeze(0)
    t = (t - t.min()) / (t.max() - t.min())
    return Image.fromarray((255 * t).to(torch.uint8).permute(1, 2, 0).numpy())


def write_workspace(root: Path, G, ex, models: Path) -> dict:
    """A FALCO repository root with N_FAKES fakes, a celebahq pairing and inversions; returns what was written."""
    gen = torch.Generator().manual_seed(7)
    fake_dir = root / FAKE_DIR
    fake_dir.mkdir(parents=True)
    (fake_dir / "args.json").write_text(json.dumps(
        {"verbose": True, "gan": GAN, "truncation": PSI, "num_samples": N_FAKES, "no_clip": True,
         "no_farl": False, "no_dino": True, "no_arcface": False, "cuda": True}))
    zs = torch.randn(N_FAKES, G.z_dim, generator=gen)
    hashes, codes, farl_rows, arcface_rows = [], [], [], []
    for i in range(N_FAKES):
        z = zs[i, :].unsqueeze(0)
        h = sha1(z.cpu().numpy()).hexdigest()
        hashes.append(h)
        d = fake_dir / h
        d.mkdir()
        zg = z.clone().requires_grad_(True)  # the reference's get_w runs with grad: wp requires grad
        wp = G.mapping(zg, truncation_psi=PSI)[:, None].repeat(1, G.num_ws, 1)
        assert wp.requires_grad and not wp.is_leaf
        with torch.no_grad():
            img = G.synthesis(wp, noise_mode="const")
            _, x = render_quantized(G, wp[:, 0])
            f_farl = ex(x) * (1.0 + 9.0 * torch.rand(1, 1, generator=gen))  # encode_image: not normalised
        f_arc = torch.randn(1, 512, generator=gen)
        torch.save(f_farl.cpu(), d / "farl_features.pt")
        torch.save(f_arc, d / "arcface_features.pt")
        tensor2image(img.cpu()).save(d / "image.jpg", "JPEG", quality=95, subsampling=0, progressive=True)
        torch.save(wp.cpu(), d / "latent_code_w+.pt")
        save_from_gpu({f"style{k:02d}": torch.randn(1, G.w_dim, generator=gen) for k in range(3)},
                      d / "latent_code_s.pt")
        codes.append(wp.detach()[0].clone())
        farl_rows.append(f_farl)
        arcface_rows.append(f_arc)
    (fake_dir / "latent_code_hashes.txt").write_text("".join(f"{h}\n" for h in hashes))
    torch.save(torch.cat(farl_rows), fake_dir / "farl_features.pt")
    torch.save(torch.cat(arcface_rows), fake_dir / "arcface_features.pt")

    feat_dir = root / "datasets" / "features" / "celebahq"
    feat_dir.mkdir(parents=True)
    (feat_dir / "image_filenames.txt").write_text("".join(f"{n}\n" for n in REALS))
    torch.save(torch.randn(len(REALS), ex.dim, generator=gen), feat_dir / "farl_features.pt")
    maps = {}
    for kind, seed in (("farl_auto_cosine", 1), ("farl_auto_euclidean", 2), ("clip_auto_cosine", 3)):
        pick = torch.randint(0, N_FAKES, (len(REALS),), generator=torch.Generator().manual_seed(seed))
        maps[kind] = {n: hashes[int(j)] for n, j in zip(REALS, pick)}
        (fake_dir / f"{kind}_nn_map_celebahq.json").write_text(json.dumps(maps[kind]))

    inv = root / "datasets" / "inv" / "celebahq"
    (inv / "latent_codes").mkdir(parents=True)
    (inv / "data").mkdir()
    (inv / "alignment_errors.txt").write_text("")
    (inv / "face_detection_errors.txt").write_text("")
    inverted, batch = {}, 4
    for s in range(0, len(INVERTED), batch):
        leaf = torch.randn(batch, G.num_ws, G.w_dim, generator=gen, requires_grad=True)
        image_latent_codes = leaf * 0.3 + G.w_avg  # e4e codes + latent_avg: a grad-tracking batch
        for i, name in enumerate(INVERTED[s:s + batch]):
            rid = name.split(".")[0]
            save_from_gpu(image_latent_codes[i], inv / "latent_codes" / f"{rid}.pt")
            inverted[rid] = image_latent_codes[i].detach().clone()
            with torch.no_grad():
                rec = G.synthesis(image_latent_codes[i:i + 1].detach(), noise_mode="const")
            crop = torch.nn.functional.interpolate(rec, size=(256, 256), mode="bilinear")
            tensor2image(crop).save(inv / "data" / f"{rid}_aligned.jpg", "JPEG", quality=95)
            tensor2image(rec).save(inv / "data" / f"{rid}_recon.jpg", "JPEG", quality=90)
    gdir = root / "models" / "pretrained" / "genforce"
    gdir.mkdir(parents=True)
    # the tiny set's generator (rosinality layout) where FALCO keeps its genforce file
    shutil.copy(resolve_model("generator", models), gdir / f"{GAN}.pth")
    return {"hashes": hashes, "codes": torch.stack(codes), "maps": maps, "inverted": inverted,
            "farl": torch.cat(farl_rows)}


@pytest.fixture(scope="module")
def nets(tiny_models):
    return {"G": load_role("generator", tiny_models), "ex": load_extractor("farl", tiny_models),
            "id": load_role("identity", tiny_models), "farl": load_role("attributes", tiny_models)}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, nets, tiny_models) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("FALCO")
    return root, write_workspace(root, nets["G"], nets["ex"], tiny_models)


def copy_of(workspace, tmp_path: Path) -> Path:
    dst = tmp_path / "FALCO"
    shutil.copytree(workspace[0], dst)
    return dst


def invoke(*args: str):
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


# ----------------------------------------------------------------------------- the fixture is faithful
def test_written_files_have_the_reference_quirks(workspace):
    root, _ = workspace
    path = next((root / "datasets/inv/celebahq/latent_codes").glob("*.pt"))
    with zipfile.ZipFile(path) as z:
        assert b"cuda:0" in z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert raw.requires_grad and raw.untyped_storage().nbytes() == 4 * raw.numel() * 4  # the whole batch of 4
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(path, weights_only=True)  # what a CPU machine gets without map_location
    wp = torch.load(next((root / FAKE_DIR).glob("*/latent_code_w+.pt")), map_location="cpu", weights_only=True)
    assert wp.requires_grad and wp.shape == (1, 10, 64)


# ----------------------------------------------------------------------------- reading
def test_read_workspace_exactly(workspace):
    root, made = workspace
    ws = read_workspace(root)
    assert ws.fake_ids == made["hashes"]
    assert ws.truncation == PSI and ws.gan == GAN and ws.num_samples == N_FAKES
    assert ws.generator == root / "models/pretrained/genforce" / f"{GAN}.pth"
    assert torch.equal(ws.fake_codes, made["codes"]) and ws.fake_codes.shape == (N_FAKES, 10, 64)
    assert ws.fake_w is not None and torch.equal(ws.fake_w, made["codes"][:, 0])
    assert ws.dataset == "celebahq" and ws.pair_map.name == "farl_auto_cosine_nn_map_celebahq.json"
    assert ws.pairs == made["maps"]["farl_auto_cosine"] and list(ws.pairs) == REALS
    assert sorted(ws.inverted, key=int) == list(made["inverted"]) == ["0", "1", "2", "3", "4"]
    for rid, code in made["inverted"].items():
        got = ws.inverted[rid]
        assert torch.equal(got, code) and not got.requires_grad and got.device.type == "cpu"
        assert got.untyped_storage().nbytes() == got.numel() * 4  # copied out of the saved batch
    assert [j[0] for j in ws.jobs()] == INVERTED
    assert torch.equal(ws.features("farl"), made["farl"])
    assert set(ws.feature_names) == {"farl", "arcface"}
    other = read_workspace(root, pair_map="clip_auto_cosine")
    assert other.pairs == made["maps"]["clip_auto_cosine"]
    assert read_workspace(root / FAKE_DIR).fake_ids == made["hashes"]  # the fake dataset folder itself


@pytest.mark.parametrize("case, match", [
    ("no hashes", "latent_code_hashes.txt: missing"),
    ("dict code", "latent_code_w\\+.pt: expected a fake's W\\+ code tensor, got dict"),
    ("bad shape", "latent_code_w\\+.pt: expected a fake's W\\+ code"),
    ("corrupt code", "latent_code_w\\+.pt: not a readable torch checkpoint"),
    ("missing fake", "latent_code_w\\+.pt: missing \\(1 of 12"),
    ("unknown fake in map", "farl_auto_cosine_nn_map_celebahq.json: real image '0.jpg' is paired with fake 'nope'"),
    ("bad json", "farl_auto_cosine_nn_map_celebahq.json: unreadable JSON"),
    ("two fake datasets", "several fake datasets"),
    ("no fake dataset", "no FALCO fake dataset"),
    ("bad inversion", "latent_codes/3.pt: expected an inverted W\\+ code"),
])
def test_one_line_errors_name_the_piece(workspace, tmp_path, case, match):
    root = copy_of(workspace, tmp_path)
    fake = root / FAKE_DIR
    first = fake / workspace[1]["hashes"][0] / "latent_code_w+.pt"
    if case == "no hashes":
        (fake / "latent_code_hashes.txt").unlink()
    elif case == "dict code":
        torch.save({"w": torch.zeros(1, 10, 64)}, first)
    elif case == "bad shape":
        torch.save(torch.zeros(2, 10, 64), first)
    elif case == "corrupt code":
        first.write_bytes(first.read_bytes()[:100])
    elif case == "missing fake":
        first.unlink()
    elif case == "unknown fake in map":
        (fake / "farl_auto_cosine_nn_map_celebahq.json").write_text(json.dumps({"0.jpg": "nope"}))
    elif case == "bad json":
        (fake / "farl_auto_cosine_nn_map_celebahq.json").write_text("{")
    elif case == "two fake datasets":
        shutil.copytree(fake, root / "datasets/fake/fake_dataset_stylegan2_ffhq512-0.7-12-FaRL")
    elif case == "no fake dataset":
        shutil.rmtree(root / "datasets/fake")
    elif case == "bad inversion":
        save_from_gpu(torch.zeros(5), root / "datasets/inv/celebahq/latent_codes/3.pt")
    with pytest.raises(FalcoError, match=match) as err:
        ws = read_workspace(root)
        ws.load_fake_codes()
        [ws.inverted[k] for k in ws.inverted]
    assert "\n" not in str(err.value)


def test_features_from_the_per_fake_files(workspace, tmp_path):
    root = copy_of(workspace, tmp_path)
    (root / FAKE_DIR / "farl_features.pt").unlink()  # stacked after the hash list: a run killed in between
    ws = read_workspace(root)
    assert "farl" not in ws.feature_names and torch.equal(ws.features("farl"), workspace[1]["farl"])


# ----------------------------------------------------------------------------- the bank
def test_import_as_bank_and_info(workspace, tiny_models, nets, tmp_path):
    root, made = workspace
    out = tmp_path / "bank"
    res = invoke("bank", "import-falco", str(root), "--out", str(out), "--models", str(tiny_models),
                 "--device", "cpu", "--chunk-size", "5", "--no-progress")
    assert res.exit_code == 0, res.output
    assert "importing" in res.output  # the workspace's farl features agree with falco's: imported
    bank = Bank.open(out)
    assert len(bank) == N_FAKES and torch.equal(bank.ws, made["codes"][:, 0])
    assert torch.equal(bank.w_plus(np.arange(N_FAKES)), made["codes"])
    src = bank.manifest["source"]
    assert src["falco_workspace"] == str(root) and src["fake_dataset"] == Path(FAKE_DIR).name
    assert bank.manifest["truncation"] == PSI and bank.manifest["features"]["imported"]
    expected = torch.nn.functional.normalize(made["farl"], dim=1).numpy()
    assert np.allclose(bank.features, expected, atol=1e-6)
    assert bank.thumbnail(6).shape == (64, 64, 3) and bank.thumbnail(6).std() > 0
    bank.check_compatible(nets["G"], nets["ex"])  # what `falco anonymize --bank` checks
    from falco.methods.falco import load_falco

    load_falco(tiny_models, bank=bank, device=torch.device("cpu"), params=FalcoParams(steps=0))
    info = invoke("bank", "info", str(out))
    assert info.exit_code == 0 and f"FALCO workspace {root}" in info.output, info.output
    again = invoke("bank", "import-falco", str(root), "--out", str(out), "--models", str(tiny_models),
                   "--device", "cpu", "--chunk-size", "5", "--no-progress")
    assert again.exit_code == 0 and "nothing to do" in again.output


def test_workspace_features_that_disagree_are_computed(workspace, nets, tiny_models):
    root, _ = workspace
    ws = read_workspace(root)
    arc = load_extractor("arcface", tiny_models)
    feats, why = _workspace_features(ws, nets["G"], arc, 4, "cpu")  # random arcface rows: not falco's
    assert feats is None and "disagrees" in why
    feats, why = _workspace_features(ws, nets["G"], nets["ex"], 4, "cpu")
    assert feats is not None and "agree" in why


# ----------------------------------------------------------------------------- the dataset run
def test_anonymize_falco_zero_steps_is_the_reference_mixing(workspace, tiny_models, nets, tmp_path):
    root, made = workspace
    out = tmp_path / "anon"
    res = invoke("anonymize-falco", str(root), "--dataset", "celebahq", "--out", str(out), "--steps", "0",
                 "--models", str(tiny_models), "--device", "cpu", "--batch-size", "3", "--no-progress")
    assert res.exit_code == 0, res.output
    assert "5 anonymized" in res.output and "1 paired but not inverted" in res.output
    pairs = made["maps"]["farl_auto_cosine"]
    for name in INVERTED:
        rid = name.split(".")[0]
        t = load_file(out / "codes" / f"{rid}.safetensors")
        fake = made["codes"][made["hashes"].index(pairs[name])]
        expected = mix_codes(made["inverted"][rid][None], fake[None], (3, 8))[0]
        assert torch.equal(t["ws"], expected)
        real = made["inverted"][rid]
        assert torch.equal(t["ws"][:3], real[:3]) and torch.equal(t["ws"][8:], real[8:])
        assert torch.equal(t["ws"][3:8], fake[3:8])
        with torch.no_grad():
            img = nets["G"].synthesis(expected[None], noise_mode="const")
        diff = np.asarray(Image.open(out / "data" / f"{rid}.png")).astype(int) - to_uint8(img)[0]
        assert np.abs(diff).max() <= 1  # rendered in a batch of 3 here, alone there
    assert not (out / "codes" / "5.safetensors").exists()
    run = json.loads((out / "run.json").read_text())
    assert run["source"]["pair_map"] == "farl_auto_cosine_nn_map_celebahq.json" and run["params"]["steps"] == 0
    again = invoke("anonymize-falco", str(root), "--dataset", "celebahq", "--out", str(out), "--steps", "0",
                   "--models", str(tiny_models), "--device", "cpu", "--no-progress")
    assert again.exit_code == 0 and "0 anonymized, 5 already done" in again.output
    with pytest.raises(InputError, match="holds a run with other settings \\(params\\)"):
        invoke("anonymize-falco", str(root), "--out", str(out), "--steps", "1", "--models", str(tiny_models),
               "--device", "cpu", "--no-progress")


def test_anonymize_workspace_optimises_only_the_fake_layers(workspace, nets, tmp_path):
    root, made = workspace
    ws = read_workspace(root, pair_map="farl_auto_euclidean")
    summary = anonymize_workspace(ws, tmp_path / "out", G=nets["G"], id_encoder=nets["id"], farl=nets["farl"],
                                  params=FalcoParams(steps=2), limit=2, progress=False)
    assert summary.done == 2 and summary.failed == []
    for name in INVERTED[:2]:
        rid = name.split(".")[0]
        t = load_file(tmp_path / "out" / "codes" / f"{rid}.safetensors")
        fake = made["codes"][made["hashes"].index(made["maps"]["farl_auto_euclidean"][name])]
        real = made["inverted"][rid]
        assert torch.equal(t["ws"][:3], real[:3]) and torch.equal(t["ws"][8:], real[8:])
        assert not torch.equal(t["ws"][3:8], fake[3:8]) and torch.equal(t["ws_fake"], fake)


@pytest.mark.parametrize("command", [["bank", "import-falco"], ["anonymize-falco"]])
def test_help_is_plain(command):
    res = invoke(*command, "--help")
    assert res.exit_code == 0
    assert f"Usage: falco {' '.join(command)} [OPTIONS] ROOT" in res.output
    assert "<bool>" not in res.output and "╭" not in res.output
    assert "~/.cache/falco/models" in " ".join(res.output.split())
