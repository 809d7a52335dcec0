"""A tiny, randomly initialised model set in the real file formats (``falco models tiny DIR``).

Every network falco loads is written the way upstream ships it, only very small:

- generator: rosinality ``stylegan2-ffhq-config-f.pt`` layout (``{"g_ema": ..., "latent_avg": ...}``),
  64 px, ``w_dim`` 64, 10 ``ws``;
- encoder: ``e4e_ffhq_encode.pt`` layout (``encoder.*``, ``decoder.*`` = the same generator,
  ``latent_avg``, ``opts``), 1 IR-SE unit per stage;
- identity: ``model_ir_se50.pth`` (a bare IR-SE state dict, 512-d embedding);
- attributes: FaRL ``{"state_dict": <OpenAI-CLIP keys>}``, a 2-layer ViT;
- ciagan: CIAGAN's ``modelG.pth`` layout (a bare ``arch_unet_flex.Generator`` state dict),
  widths / 8 and 16 identities;
- deepprivacy: DeepPrivacy's trainer checkpoint layout (``running_average_generator``,
  ``global_step``), a v1 generator 16 / 8 channels wide;
- parsing: the BiSeNet face parser's ``79999_iter.pth`` layout (a bare state dict), widths 8..32;
- anonygan: AnonyGAN's Lightning checkpoint layout (``state_dict`` with ``G.*``, ``epoch``,
  ``global_step``), ``ngf`` 4 and 2 graph blocks.

The set's ``manifest.json`` has ``kind: "tiny-random"``; every command that loads it warns
that its outputs are not meaningful. Weights are seeded, so two sets written with the same
seed are identical.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from falco.run.atomic import atomic_path
from falco.pretrained.modelset import KIND_TINY, write_manifest
from falco.pretrained.registry import REGISTRY

__all__ = ["TINY_NOTE", "TINY_GENERATOR", "tiny_generator", "write_tiny_model_set"]

TINY_NOTE = "random weights at tiny sizes, for tests and offline runs: outputs are not meaningful"

#: Generator architecture of the tiny set (64 px -> num_ws = 10).
TINY_GENERATOR = dict(img_resolution=64, w_dim=64, num_mapping_layers=2,
                      channels={4: 32, 8: 32, 16: 32, 32: 16, 64: 16})

_NAMES = {
    "generator": "stylegan2-ffhq-1024-rosinality",
    "encoder": "e4e-ffhq",
    "identity": "arcface-irse50",
    "attributes": "farl-ep64",
    "ciagan": "ciagan",
    "deepprivacy": "deepprivacy",
    "parsing": "bisenet-face-parsing",
    "anonygan": "anonygan",
}


def tiny_generator(seed: int = 0):
    """The tiny set's StyleGAN2 generator with ``w_avg`` filled from 2,000 mapped samples."""
    from falco.models.stylegan2 import Generator

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        G = Generator(**TINY_GENERATOR).eval()
    with torch.no_grad():
        G.w_avg.copy_(G.mean_w(2000, seed=seed))
    return G


def write_tiny_model_set(directory: str | os.PathLike[str], *, seed: int = 0) -> Path:
    """Write the tiny random model set into ``directory`` (created if needed).

    Existing files of the same names are replaced atomically. Returns the manifest path.
    """
    from falco.models.anonygan import tiny_anonygan_state_dict
    from falco.models.ciagan_net import tiny_ciagan_state_dict
    from falco.models.deepprivacy_net import tiny_deepprivacy_state_dict
    from falco.models.arcface import tiny_arcface
    from falco.models.e4e import tiny_e4e
    from falco.models.farl import tiny_farl_state_dict
    from falco.models.parsing import tiny_bisenet_state_dict

    d = Path(directory).expanduser().absolute()
    d.mkdir(parents=True, exist_ok=True)
    G = tiny_generator(seed)
    g_sd = {k: v.clone() for k, v in G.state_dict().items() if k != "w_avg"}
    files: dict[str, Path] = {}

    def save(role: str, obj: object) -> None:
        name = _NAMES[role]
        path = d / REGISTRY[name].filename
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            torch.save(obj, fh)  # through a handle: the archive does not record the temp file's random name
        files[name] = path

    save("generator", {"g_ema": g_sd, "latent_avg": G.w_avg.clone()})
    E = tiny_e4e(n_styles=G.num_ws, w_dim=G.w_dim, seed=seed)
    save("encoder", {
        "state_dict": {**{f"encoder.{k}": v for k, v in E.state_dict().items() if k != "latent_avg"},
                       **{f"decoder.{k}": v for k, v in g_sd.items()}},
        "latent_avg": G.w_avg.repeat(G.num_ws, 1),
        "opts": {"stylegan_size": G.img_resolution, "encoder_type": "Encoder4Editing"},
    })
    save("identity", tiny_arcface(seed=seed).facenet.state_dict())
    save("attributes", {"state_dict": tiny_farl_state_dict(seed=seed)})
    save("ciagan", tiny_ciagan_state_dict(seed=seed))
    save("deepprivacy", {"running_average_generator": tiny_deepprivacy_state_dict(seed=seed), "global_step": 0})
    save("parsing", tiny_bisenet_state_dict(seed=seed))
    save("anonygan", {"state_dict": {f"G.{k}": v for k, v in tiny_anonygan_state_dict(seed=seed).items()},
                      "epoch": 0, "global_step": 0, "pytorch-lightning_version": "1.5.10"})
    return write_manifest(d, kind=KIND_TINY, files=files, note=TINY_NOTE,
                          defaults=dict(_NAMES), seed=seed)
