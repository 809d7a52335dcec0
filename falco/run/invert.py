"""``falco invert``: every face of every photo to an aligned crop and a W+ code.

Outputs under ``--out``:
    ``aligned/<input key>/face_NN.png``  the FFHQ-aligned crop that was inverted;
    ``codes/<input key>.safetensors``    ``ws`` ``[faces, num_ws, w_dim]`` plus ``quads``,
                                         ``landmarks`` and ``boxes`` (readable without falco);
    ``manifest.sqlite``                  one row per input and per face (status, geometry,
                                         output paths, index into the codes file).
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from falco import __version__
from falco.config import InvertConfig, as_dict
from falco.run.sharding import local_device
from falco.errors import InputError, ModelNotFoundError
from falco.run.image_files import save_image
from falco.latent.images import to_tensor
from falco.latent.invert import invert
from falco.run.inputs import check_output_dir, discover_inputs, save_tensors
from falco.run.manifest import RunManifest
from falco.models.zoo import load_role, resolve_device, tiny_notice
from falco.run.runner import FaceRun, Photo, RunSummary, face_row, run_in_out_dir

log = logging.getLogger(__name__)


def run_invert(cfg: InvertConfig, *, echo=print) -> RunSummary:
    """Run ``falco invert`` with the given settings; returns the run summary."""
    items = discover_inputs(cfg.input)
    check_output_dir(cfg.out, cfg.input)
    device = local_device(resolve_device(cfg.device))
    return run_in_out_dir(cfg.out, items, device, lambda mine: _run_invert(cfg, mine, device, echo))


def _run_invert(cfg: InvertConfig, items, device, echo) -> RunSummary:
    notice = tiny_notice(cfg.models)
    if notice:
        echo(f"warning: {notice}")
    torch.manual_seed(cfg.seed)
    E, latent_avg = load_role("encoder", cfg.models, device)
    G = load_role("generator", cfg.models, device) if cfg.refine_steps else None
    id_encoder = None
    if G is not None:
        if G.num_ws != E.n_styles:
            raise InputError(f"the generator has {G.num_ws} W+ layers but the encoder predicts {E.n_styles}: "
                             "they do not belong together")
        try:  # refinement adds the ArcFace identity term when that network is installed
            id_encoder = load_role("identity", cfg.models, device)
        except ModelNotFoundError:
            echo("warning: ArcFace is not installed: refinement uses the pixel loss only")

    manifest = RunManifest(cfg.out)
    manifest.start_run("invert", as_dict(cfg), env={"falco": __version__, "torch": torch.__version__,
                                                     "device": str(device), "tiny_models": bool(notice)})

    def process(faces):
        x = to_tensor(np.stack([f.image for f in faces]), size=256, device=device)
        ws = invert(x, E, G, latent_avg=latent_avg, refine_steps=cfg.refine_steps, id_encoder=id_encoder,
                    batch_size=cfg.batch_size)
        return list(ws.cpu())

    def finish(photo: Photo, ws_list):
        if not photo.faces:
            return {}, []
        key = photo.item.key
        codes_rel = f"codes/{key}.safetensors"
        rows, outputs = [], {"codes": codes_rel, "aligned": []}
        for i, face in enumerate(photo.faces):
            rel = f"aligned/{key}/face_{i:02d}.png"
            (cfg.out / rel).parent.mkdir(parents=True, exist_ok=True)
            save_image(cfg.out / rel, face.image, format="png")
            outputs["aligned"].append(rel)
            rows.append(face_row(face, aligned=rel, codes=codes_rel, code_index=i))
        save_tensors(cfg.out / codes_rel, {
            "ws": torch.stack(ws_list),
            "quads": torch.tensor(np.stack([f.quad for f in photo.faces]), dtype=torch.float64),
            "landmarks": torch.tensor(np.stack([f.landmarks for f in photo.faces]), dtype=torch.float64),
            "boxes": torch.tensor([list(f.box) for f in photo.faces], dtype=torch.int64),
        }, metadata={"source": key, "format": "falco-invert-1"})
        return outputs, rows

    runner = FaceRun(items, manifest, detector=cfg.detector, upsample=cfg.upsample, align_size=cfg.align_size,
                     batch_size=cfg.batch_size, progress=cfg.progress, max_pixels=cfg.max_pixels)
    summary = runner.run(process, finish)
    manifest.finish_run(summary.as_dict())
    manifest.close()
    return summary
