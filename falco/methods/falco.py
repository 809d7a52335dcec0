"""FALCO behind the :class:`~falco.methods.base.Anonymizer` interface.

``process`` (batched across photos): aligned crops -> e4e W+ codes -> features -> nearest fake
in the bank -> :func:`falco.latent.optimise.optimise` -> rendered anonymized crops.
``apply`` (per photo): paste every anonymized crop back into the photo.

A batch that fails (e.g. a NaN loss) is retried face by face; a face that still fails is
marked failed and ``apply`` covers it with the ``on_fail`` fallback, so no identifiable face
leaves the tool by accident. Under fp16, a face whose steps were mostly skipped (gradient
overflow, :func:`falco.latent.optimise.too_many_skipped`) is re-optimised alone in fp32, and
marked failed if that fails too.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from falco.latent.optimise import FalcoParams, OptimResult, optimise, too_many_skipped
from falco.methods.base import Anonymizer, RegionFocus, StepCallback
from falco.methods.cover import check_on_fail, fallback
from falco.errors import InputError, RunAbortedError
from falco.faces.ffhq import AlignedFace
from falco.faces.paste import paste_back
from falco.latent.images import to_tensor, to_uint8
from falco.latent.invert import encode, render_256
from falco.run.inputs import save_tensors

if TYPE_CHECKING:  # annotations only
    from falco.config import AnonymizeConfig
    from falco.methods.base import Echo

log = logging.getLogger(__name__)

#: The format tag of the W+ code files (``codes/<key>.safetensors``).
CODES_FORMAT = "falco-anonymize-1"


@dataclass
class FalcoFace:
    """What :meth:`FalcoAnonymizer.process` gives back for one face."""

    ok: bool
    reason: str | None = None
    crop: np.ndarray | None = None          # anonymized crop, generator resolution, uint8
    ws: torch.Tensor | None = None          # [num_ws, w_dim]
    ws_real: torch.Tensor | None = None     # [num_ws, w_dim]
    neighbour: int | None = None
    losses: dict[str, float] = field(default_factory=dict)
    curves: dict[str, list[float]] = field(default_factory=dict)
    previews: dict[str, np.ndarray] = field(default_factory=dict)  # 'inverted', 'neighbour' (256 px)
    skipped_steps: int = 0                  # fp16 steps skipped for this face (gradient overflow)
    fp32_retry: bool = False                # too many skipped: re-optimised alone in fp32


class FalcoAnonymizer(Anonymizer):
    """FALCO (Barattin et al., CVPR 2023) as an anonymizer.

    Args:
        G, E, latent_avg, id_encoder, farl: Networks (see :func:`falco.models.zoo.load_role`).
        bank: An open :class:`falco.bank.Bank`; ``extractor``: the feature extractor it was built with.
        params: FALCO hyperparameters.
        on_fail: What covers a face that cannot be anonymized: blur, pixelate, mask or skip.
        previews: Also render the inverted real face and the neighbour (for ``--save-crops``).
        reuse: Let several faces share one fake (the paper). ``False``: every face gets a fake no
            earlier face of the run got (the nearest unused one, in processing order; faces
            already in ``used`` count as taken). Ranks of a torchrun job do not share this.
        used: Bank indices already given out (e.g. by an interrupted run, from its manifest).
    """

    name = "falco"
    roles = ("generator", "encoder", "identity", "attributes")
    can_redo = True

    def __init__(self, *, G, E, latent_avg, id_encoder, farl, bank, extractor, params: FalcoParams = FalcoParams(),
                 on_fail: str = "blur", previews: bool = False, device: str | torch.device = "cpu",
                 reuse: bool = True, used: set[int] | None = None) -> None:
        check_on_fail(on_fail)
        if E.n_styles != G.num_ws:
            raise InputError(f"the encoder predicts {E.n_styles} W+ layers but the generator has {G.num_ws}")
        if params.layers[1] > G.num_ws:
            raise InputError(f"layers {params.layers}: the generator has only {G.num_ws} W+ layers")
        bank.check_compatible(G, extractor)
        self.G, self.E, self.latent_avg = G, E, latent_avg
        self.id_encoder, self.farl = id_encoder, farl
        self.bank, self.extractor = bank, extractor
        self.params, self.on_fail, self.previews = params, on_fail, previews
        self.device = torch.device(device)
        self.reuse = reuse
        self.used: set[int] = set(used or ())
        self.on_step: StepCallback | None = None
        self._warm: dict[int, tuple[int, torch.Tensor | None]] = {}  # video: id(face) -> (fake, start code)
        self.region_focus: RegionFocus | None = None  # --keep/--change: the attribute loss favours those parts

    def settings(self) -> dict:
        return {"method": "falco", **self.params.as_dict(), "on_fail": self.on_fail,
                "bank": str(getattr(self.bank, "path", "")), "bank_size": len(self.bank),
                "features": getattr(self.extractor, "name", "?"), "reuse": self.reuse}

    # -- batched work ------------------------------------------------------------------------
    def process(self, faces: list[AlignedFace]) -> list[FalcoFace]:
        if not faces:
            return []
        try:
            return self._process(faces)
        except RunAbortedError:
            raise
        except torch.OutOfMemoryError as exc:
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            if len(faces) == 1:
                log.warning("face could not be anonymized: out of memory even alone: %s", exc)
                return [FalcoFace(ok=False, reason="OutOfMemoryError: out of memory even at batch 1")]
            half = len(faces) // 2
            log.warning("out of memory at batch %d: retrying as %d + %d faces (a smaller --batch-size avoids this)",
                        len(faces), half, len(faces) - half)
            return self.process(faces[:half]) + self.process(faces[half:])
        except Exception as exc:
            if len(faces) == 1:
                log.warning("face could not be anonymized: %s: %s", type(exc).__name__, exc)
                return [FalcoFace(ok=False, reason=f"{type(exc).__name__}: {exc}")]
            log.warning("batch of %d faces failed (%s: %s): retrying one face at a time",
                        len(faces), type(exc).__name__, exc)
            return [r for face in faces for r in self.process([face])]

    def _process(self, faces: list[AlignedFace]) -> list[FalcoFace]:
        G, dev = self.G, self.device
        x_real = to_tensor(np.stack([f.image for f in faces]), size=256, device=dev)
        with torch.no_grad():
            ws_real = encode(self.E, x_real, self.latent_avg)
            feats = None if self._warm else self.bank.query_features(self.extractor, x_real)  # like the bank's fakes
        warm = [self._warm.get(id(f)) for f in faces] if self._warm else None  # video: per-track fakes
        idx = self._pair(feats) if warm is None else np.asarray([w[0] for w in warm], dtype=np.int64)
        w_fake = self.bank.ws[torch.as_tensor(idx, dtype=torch.long)].to(dev, torch.float32)
        ws_fake = w_fake[:, None].repeat(1, G.num_ws, 1)
        if warm is not None and all(w[1] is not None for w in warm):  # warm start from the previous frame
            ws_fake = torch.stack([w[1] for w in warm]).to(dev, torch.float32)
        masks = self._focus_masks(faces)
        result = optimise(ws_real, ws_fake, x_real, G, self.id_encoder, self.farl, params=self.params,
                          on_step=self.on_step, attr_masks=masks)
        skipped = [int(n) for n in result.skipped]
        retried = [i for i, n in enumerate(skipped) if too_many_skipped(n, self.params.steps)]
        failed = {i: why for i in retried if (why := self._retry_fp32(result, i, ws_real, ws_fake, x_real, masks))}
        if not torch.isfinite(result.ws).all():
            raise FloatingPointError("the optimisation diverged (non-finite W+ code)")
        if not self.reuse:  # given out only now: the fakes of a failed batch (or face) stay free
            self.used.update(int(j) for i, j in enumerate(idx) if i not in failed)
        with torch.no_grad():
            crops = to_uint8(G.synthesis(result.ws, noise_mode="const"))
            previews = {}
            if self.previews:
                previews = {"inverted": to_uint8(render_256(G, ws_real)),
                            "neighbour": to_uint8(render_256(G, ws_fake))}
        out = []
        for i in range(len(faces)):
            if i in failed:
                out.append(FalcoFace(ok=False, reason=failed[i], skipped_steps=skipped[i], fp32_retry=True))
                continue
            out.append(FalcoFace(
                ok=True, crop=crops[i], ws=result.ws[i].cpu(), ws_real=ws_real[i].cpu(), neighbour=int(idx[i]),
                losses={k: _finite(v) for k, v in result.final(i).items()},
                curves={k: v[:, i].tolist() for k, v in result.losses.items()},
                previews={k: v[i] for k, v in previews.items()},
                skipped_steps=skipped[i], fp32_retry=i in retried,
            ))
        return out

    def _retry_fp32(self, result: OptimResult, i: int, ws_real: torch.Tensor, ws_fake: torch.Tensor,
                    x_real: torch.Tensor, masks: torch.Tensor | None = None) -> str | None:
        """Re-optimise face ``i`` of a batch alone in fp32 (most of its fp16 steps were skipped).

        On success its code and losses replace the fp16 ones in ``result`` and None is returned;
        otherwise the reason the face failed (its fp16 code, hardly optimised, is left in ``result``).
        """
        why = f"fp16: {int(result.skipped[i])} of {self.params.steps} steps skipped (gradient overflow)"
        log.warning("face %d of the batch: %s; re-optimising it alone in fp32", i, why)
        one = slice(i, i + 1)
        try:
            redo = optimise(ws_real[one], ws_fake[one], x_real[one], self.G, self.id_encoder, self.farl,
                            params=replace(self.params, amp=None), attr_masks=None if masks is None else masks[one])
        except (RunAbortedError, torch.OutOfMemoryError):
            raise
        except Exception as exc:
            why = f"{why}; the fp32 retry failed: {type(exc).__name__}: {exc}"
        else:
            if torch.isfinite(redo.ws).all():
                result.ws[i] = redo.ws[0]
                for key, value in redo.losses.items():
                    result.losses[key][:, i] = value[:, 0]
                return None
            why = f"{why}; the fp32 retry diverged (non-finite W+ code)"
        log.warning("face could not be anonymized: %s", why)
        return why

    def set_region_focus(self, masks: RegionFocus | None) -> None:
        self.region_focus = masks

    def _focus_masks(self, faces: list[AlignedFace]) -> torch.Tensor | None:
        """The faces' ``--keep``/``--change`` masks at 256 px (see :meth:`set_region_focus`), or None."""
        if self.region_focus is None or self.params.region_focus == 0:
            return None
        masks = np.stack([np.asarray(m, dtype=np.float32) for m in self.region_focus(faces)])
        return torch.from_numpy(masks).to(self.device)

    def process_tracked(self, faces: list[AlignedFace], neighbours: Sequence[int],
                        starts: Sequence[torch.Tensor] | None = None, steps: int | None = None) -> list[FalcoFace]:
        """Video: faces of tracks, face ``i`` paired with its track's fake ``neighbours[i]``; with ``starts``
        (one ``[num_ws, w_dim]`` code per face, the track's previous frame), a warm start of ``steps`` steps."""
        saved = self._warm, self.params
        self._warm = {id(f): (int(n), None if starts is None else starts[i])
                      for i, (f, n) in enumerate(zip(faces, neighbours))}
        if steps is not None:
            self.params = replace(self.params, steps=steps)
        try:
            return self.process(faces)
        finally:
            self._warm, self.params = saved

    def redo(self, photo: np.ndarray, face: AlignedFace, factor: float = 3.0) -> np.ndarray | None:
        """Anonymize ``face`` again with the identity weight times ``factor``; None if that fails."""
        return self._redo(photo, face, factor, lambda: self.process([face])[0])

    def redo_tracked(self, photo: np.ndarray, face: AlignedFace, neighbour: int,
                     factor: float = 3.0) -> np.ndarray | None:
        """:meth:`redo` from the fake ``neighbour`` (video: the track's own, so the re-done face keeps the
        track's new identity), a full optimisation without warm start."""
        return self._redo(photo, face, factor, lambda: self.process_tracked([face], [neighbour])[0])

    def _redo(self, photo: np.ndarray, face: AlignedFace, factor: float, run: Callable[[], FalcoFace]
              ) -> np.ndarray | None:
        saved = self.params
        self.params = replace(saved, lambda_id=saved.lambda_id * factor)
        try:
            res = run()
        finally:
            self.params = saved
        return paste_back(photo, face, res.crop) if res.ok else None

    def _pair(self, feats: np.ndarray) -> np.ndarray:
        """The bank index of each face's fake (see ``reuse``); :meth:`_process` marks them used on success.

        Without reuse the faces are paired one at a time, in processing order, each with the
        nearest fake still free, so a face's fake never depends on which faces share its batch.
        """
        if self.reuse:
            return np.asarray(self.bank.pair(feats)).reshape(-1)
        taken = set(self.used)
        self.check_free(len(taken), len(feats), "faces")
        out = []
        for q in feats:
            pick = self.nearest_free(q, taken)
            taken.add(pick)
            out.append(pick)
        return np.asarray(out, dtype=np.int64)

    def check_free(self, taken: int, more: int, what: str) -> None:
        """``--no-reuse``: raise InputError when ``taken`` fakes are given out and ``more`` ``what`` need one each
        but the bank is too small."""
        if taken + more > len(self.bank):
            raise InputError(f"--no-reuse: the bank has {len(self.bank)} fakes and {taken} are taken, "
                             f"{more} more {what} need one each; build a larger bank")

    def nearest_free(self, feat: np.ndarray, taken: set[int]) -> int:
        """``--no-reuse``: the bank index of the fake nearest to one face's features ``feat`` that is not in
        ``taken``."""
        return int(np.asarray(self.bank.pair(feat[None], reuse=False, taken=taken)).reshape(-1)[0])

    # -- a run's hooks ---------------------------------------------------------------------------
    @classmethod
    def prepare_run(cls, cfg: AnonymizeConfig, device: torch.device, echo: Echo) -> None:
        """Open the bank, or build it under ``OUT/bank`` before the ranks of a torchrun job start."""
        open_or_build_bank(cfg, device, echo)

    @classmethod
    def from_config(cls, cfg: AnonymizeConfig, *, device: torch.device, echo: Echo) -> FalcoAnonymizer:
        """Load the networks of ``cfg.models`` and the bank; with ``reuse=False``, the fakes a
        resumed run already gave out (read from its manifest) stay taken."""
        bank = open_or_build_bank(cfg, device, echo)
        used = None
        if not cfg.reuse and (cfg.out / "manifest.sqlite").exists():
            from falco.run.manifest import RunManifest

            with RunManifest(cfg.out) as m:
                used = {int(f["neighbour"]) for f in m.faces() if f.get("neighbour") is not None}
        return load_falco(cfg.models, bank=bank, device=device, params=cfg.falco, on_fail=cfg.on_fail,
                          previews=cfg.save_crops, reuse=cfg.reuse, used=used)

    def set_step_callback(self, on_step: StepCallback | None) -> None:
        self.on_step = on_step

    def summary(self) -> dict:
        """With an approximate bank index: its recall@1 measured on this run's queries and how many
        were checked against exact search (:attr:`falco.bank.Bank.pairing_recall_at_1`); else nothing."""
        if not getattr(self.bank, "approximate", False):
            return {}
        return {"pairing_recall_at_1": self.bank.pairing_recall_at_1, "pairing_checked": self.bank.pairing_checked}

    def face_fields(self, result: FalcoFace) -> dict:
        """``loss_curves``; ``skipped_steps`` under fp16 (or when non-zero); ``fp32_retry`` when it happened."""
        fields: dict[str, Any] = {"loss_curves": result.curves} if result.curves else {}
        if self.params.amp == "fp16" or result.skipped_steps:
            fields["skipped_steps"] = result.skipped_steps
        if result.fp32_retry:
            fields["fp32_retry"] = True
        return fields

    def crops(self, face: AlignedFace, result: FalcoFace) -> dict[str, np.ndarray]:
        return {"anon": result.crop, **result.previews} if result.ok else {}

    def write_outputs(self, out: Path, key: str, faces: Sequence[AlignedFace],
                      results: Sequence[FalcoFace]) -> tuple[dict[str, str], list[dict]]:
        """``codes/<key>.safetensors``: ``ws``, ``ws_real``, ``neighbours``, ``ok``, ``quads``, ``boxes``."""
        if not faces:
            return {}, []
        rel = f"codes/{key}.safetensors"
        ref = next((r for r in results if r.ok), None)
        nan = torch.full(tuple(ref.ws.shape) if ref is not None else (0, 0), float("nan"))
        save_tensors(out / rel, {
            "ws": torch.stack([r.ws if r.ok else nan for r in results]),
            "ws_real": torch.stack([r.ws_real if r.ok else nan for r in results]),
            "neighbours": torch.tensor([r.neighbour if r.ok else -1 for r in results], dtype=torch.int64),
            "ok": torch.tensor([r.ok for r in results], dtype=torch.bool),
            "quads": torch.tensor(np.stack([f.quad for f in faces]), dtype=torch.float64),
            "boxes": torch.tensor([list(f.box) for f in faces], dtype=torch.int64),
        }, metadata={"source": key, "format": CODES_FORMAT})
        return {"codes": rel}, [{"codes": rel, "code_index": i} for i in range(len(faces))]

    # -- per photo ---------------------------------------------------------------------------
    def apply(self, photo: np.ndarray, faces: list[AlignedFace], results: list[FalcoFace]) -> tuple[np.ndarray, list[dict]]:
        out = photo
        records = []
        for face, res in zip(faces, results):
            if res.ok:
                out = paste_back(out, face, res.crop)
                records.append({"method": "falco", "status": "done", "neighbour": res.neighbour, "losses": res.losses})
            elif self.on_fail == "skip":
                records.append({"method": "none", "status": "failed", "reason": res.reason, "fallback": "skip"})
            else:
                out = fallback(out, face, self.on_fail)
                records.append({"method": self.on_fail, "status": "fallback", "reason": res.reason,
                                "fallback": self.on_fail})
        return (out.copy() if out is photo else out), records


def open_or_build_bank(cfg: AnonymizeConfig, device: torch.device, echo: Echo) -> Any:
    """The bank given with ``--bank``, else one built (or resumed) under ``OUT/bank``."""
    from falco.bank import Bank, build_bank
    from falco.bank.features import load_extractor
    from falco.models.zoo import load_role

    if cfg.bank is not None:
        return Bank.open(cfg.bank)
    path = cfg.out / "bank"
    if (path / "manifest.json").exists():
        return Bank.open(path)
    echo(f"warning: no --bank given: building a small bank of {cfg.bank_size} fakes in {path} "
         "(build a large one once with `falco bank build` and pass --bank)")
    G = load_role("generator", cfg.models, device)
    extractor = load_extractor("farl", cfg.models, device)
    build_bank(path, G, extractor, num=cfg.bank_size, seed=cfg.seed, batch_size=max(cfg.batch_size, 8),
               device=device, progress=cfg.progress)
    return Bank.open(path)


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def load_falco(models: str | os.PathLike | None, *, bank: Any, device: torch.device, params: FalcoParams,
               on_fail: str = "blur", previews: bool = False, reuse: bool = True,
               used: set[int] | None = None) -> FalcoAnonymizer:
    """Load every network FALCO needs from a model set and wrap them with ``bank``."""
    from falco.bank.features import load_extractor
    from falco.models.zoo import load_role

    G = load_role("generator", models, device)
    E, latent_avg = load_role("encoder", models, device)
    extractor = load_extractor(bank.manifest["features"]["name"], models, device)  # the bank's own extractor
    # Pairing in FaRL space (the default) uses the attribute loss's network: load it once.
    farl = extractor.net if extractor.name == "farl" else load_role("attributes", models, device)
    return FalcoAnonymizer(G=G, E=E, latent_avg=latent_avg, id_encoder=load_role("identity", models, device),
                           farl=farl, bank=bank, extractor=extractor,
                           params=params, on_fail=on_fail, previews=previews, device=device, reuse=reuse, used=used)
