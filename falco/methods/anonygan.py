"""AnonyGAN (Dall'Asen et al., ICIAP 2021) as a method: CelebA alignment, a condition face that
does not exist, the generator, paste-back.

Per face:

1. Alignment as CelebA's ``img_align_celeba`` (its ``align_face_celeba.m``): the least-squares
   similarity taking the two eye centres and the mouth's midpoint (dlib points 36-41, 42-47,
   mean of 48 and 54) to (69.745, 111), (107.237, 111), (88.432, 152.514) in the 178 x 218
   crop (0-based; upstream's MATLAB is 1-based), then upstream's resize to 180 x 220, applied as
   one affine warp (bicubic, edge-replicated outside the photo, Lanczos pre-shrink for large
   faces).
2. The source's landmarks are mapped into that frame; :func:`~falco.models.anonygan.face_mask`
   (jaw line closed at the brows' height) is the region to regenerate, and
   :func:`~falco.models.anonygan.encode_landmarks` the pose input, as upstream's test path.
3. The condition face (whose appearance AnonyGAN draws) is a person who does not exist: a
   StyleGAN2 fake of the model set's generator, ``z`` seeded by the run seed and the pool index
   ``face_seed(seed, face) % conditions``, truncation 0.7, its 68 landmarks found by dlib (HOG)
   and aligned like the source. If dlib finds no face in a fake, the next of 3 attempts (another
   ``z``) is rendered; after that a mean face shape placed where the generator's FFHQ alignment
   puts faces stands in for the landmarks (always the case with the tiny random model set,
   whose fakes are noise). ``condition=PATH`` instead takes the largest face of one photo
   (which must show a person who does not exist) for every face. Each face's manifest row
   records its condition (``condition``: source, pool index, seed, attempt, landmarks).
4. ``G(cat(condition, source * (1 - mask)), cat(lm_condition, lm_source))``, and the mask's
   region of the output is pasted back through the inverse warp (bilinear, mask-weighted), so
   pixels outside the jaw-and-brows polygon stay bit-identical; the privacy guard then checks
   every face like any other method's.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import scipy.ndimage
import torch
from PIL import Image

from falco.errors import InputError
from falco.faces.ffhq import AlignedFace, apply_transform, ffhq_quad, quad_transform
from falco.methods._frame import blend_sampled, crop_padded, resize_float
from falco.methods.base import (Anonymizer, check_apply_args, check_seed_and_batch, face_seed, load_method_generator,
                                prepare_all)
from falco.methods.cover import check_on_fail, paste_or_cover
from falco.models.anonygan import FRAME_SIZE, Generator, encode_landmarks, face_mask, load_generator

__all__ = [
    "CELEBA_POINTS",
    "AnonyganAnonymizer",
    "Condition",
    "celeba_transform",
    "condition_from_photo",
    "paste_warped",
    "warp_to_frame",
]

#: CelebA's crop ``(height, width)``, resized by upstream to :data:`~falco.models.anonygan.FRAME_SIZE`.
CELEBA_SIZE: tuple[int, int] = (218, 178)
#: Where CelebA's alignment puts the eye centres and the mouth's midpoint (0-based pixel centres, 178 x 218).
CELEBA_POINTS = np.array([[69.745, 111.0], [107.237, 111.0], [88.432, 152.514]])
#: Rendering attempts per condition before the mean shape stands in for dlib's landmarks.
RENDER_ATTEMPTS = 3
#: A mean dlib-68 face (Procrustes mean of the 43 annotated faces of dlib's example photos), eye
#: centres at (-0.5, 0) and (0.5, 0); used only where dlib finds no face in a fake.
MEAN_SHAPE = np.array([
    -1.11, .08, -1.11, .38, -1.08, .67, -1.02, .97, -.91, 1.25, -.74, 1.49, -.52, 1.7, -.28, 1.87, -.01, 1.92,
    .29, 1.88, .56, 1.72, .8, 1.53, 1.01, 1.29, 1.14, 1.01, 1.21, .7, 1.24, .39, 1.26, .06, -.92, -.21, -.8, -.35,
    -.61, -.4, -.42, -.38, -.23, -.31, .19, -.31, .39, -.39, .6, -.4, .8, -.34, .94, -.21, -.02, -.05, -.03, .14,
    -.04, .33, -.04, .53, -.26, .66, -.15, .71, -.03, .75, .1, .71, .21, .67, -.69, .01, -.57, -.05, -.43, -.06,
    -.31, .02, -.43, .04, -.57, .04, .31, .02, .43, -.06, .57, -.06, .69, .01, .57, .04, .43, .04, -.47, 1.05,
    -.32, .96, -.15, .94, -.02, .95, .11, .92, .31, .96, .5, 1.05, .33, 1.24, .13, 1.32, -.02, 1.33, -.16, 1.32,
    -.33, 1.25, -.41, 1.06, -.15, 1.01, -.01, 1.03, .12, 1.01, .42, 1.06, .12, 1.18, -.02, 1.2, -.15, 1.18,
]).reshape(68, 2)


# ----------------------------------------------------------------------- the frame
def celeba_transform(landmarks: np.ndarray) -> np.ndarray:
    """The affine map from photo pixel centres to the 180 x 220 frame's (CelebA alignment + resize).

    Shape: ``landmarks`` ``[68, 2]`` ``(x, y)``; returns ``[3, 3]`` float64.

    Raises:
        InputError: Bad landmarks or a degenerate face (eyes and mouth coincide).
    """
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.shape != (68, 2) or not np.isfinite(lm).all():
        raise InputError(f"landmarks must be a finite [68, 2] array, got shape {list(lm.shape)}")
    src = np.stack([lm[36:42].mean(0), lm[42:48].mean(0), (lm[48] + lm[54]) / 2])
    # x' = a x - b y + tx, y' = b x + a y + ty (nonreflective similarity), least squares
    rows = np.concatenate([np.stack([src[:, 0], -src[:, 1], np.ones(3), np.zeros(3)], 1),
                           np.stack([src[:, 1], src[:, 0], np.zeros(3), np.ones(3)], 1)])
    (a, b, tx, ty), _, rank, _ = np.linalg.lstsq(rows, np.concatenate([CELEBA_POINTS[:, 0], CELEBA_POINTS[:, 1]]),
                                                 rcond=None)
    if rank < 4 or not np.hypot(a, b) > 1e-6:
        raise InputError("landmarks describe a degenerate face (eyes and mouth coincide)")
    sim = np.array([[a, -b, tx], [b, a, ty], [0.0, 0.0, 1.0]])
    sx, sy = FRAME_SIZE[1] / CELEBA_SIZE[1], FRAME_SIZE[0] / CELEBA_SIZE[0]
    resize = np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0.0, 0.0, 1.0]])
    return resize @ sim


def _scale(matrix: np.ndarray) -> float:
    """Frame pixels per photo pixel of a photo -> frame map."""
    return float(np.sqrt(abs(np.linalg.det(matrix[:2, :2]))))


def warp_to_frame(photo: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """The frame's view of a photo: bicubic, edge-replicated outside it, Lanczos pre-shrink when
    the face is larger in the photo than in the frame.

    Shape: ``photo`` ``[H, W, 3]`` uint8; returns ``[220, 180, 3]`` uint8.
    """
    height, width = FRAME_SIZE
    inv = np.linalg.inv(matrix)
    corners = apply_transform(inv, np.array([[-0.5, -0.5], [width - 0.5, -0.5], [-0.5, height - 0.5],
                                             [width - 0.5, height - 0.5]]))
    x0, y0 = (int(np.floor(v)) - 3 for v in corners.min(0))
    x1, y1 = (int(np.ceil(v)) + 4 for v in corners.max(0))
    crop = crop_padded(photo, x0, y0, x1, y1, mode="edge")
    q = min(1.0, _scale(matrix))
    cw, ch = max(1, round((x1 - x0) * q)), max(1, round((y1 - y0) * q))
    img = Image.fromarray(crop)
    if (cw, ch) != (x1 - x0, y1 - y0):
        img = img.resize((cw, ch), Image.Resampling.LANCZOS)
    qx, qy = cw / (x1 - x0), ch / (y1 - y0)
    to_crop = np.array([[qx, 0.0, (0.5 - x0) * qx - 0.5], [0.0, qy, (0.5 - y0) * qy - 0.5], [0.0, 0.0, 1.0]]) @ inv
    a = to_crop[:2]  # frame centres -> crop centres; Pillow wants corner coordinates
    data = (a[0, 0], a[0, 1], a[0, 2] + 0.5 - 0.5 * (a[0, 0] + a[0, 1]),
            a[1, 0], a[1, 1], a[1, 2] + 0.5 - 0.5 * (a[1, 0] + a[1, 1]))
    return np.asarray(img.transform((width, height), Image.Transform.AFFINE, data, Image.Resampling.BICUBIC))


def paste_warped(photo: np.ndarray, matrix: np.ndarray, image: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Blend a frame image back into the photo through the inverse of ``matrix``.

    ``image`` and ``alpha`` are sampled bilinearly at every photo pixel the frame's non-zero
    ``alpha`` covers (after a Lanczos / box pre-shrink when the face is smaller in the photo
    than twice its frame size, against aliasing); photo pixels where the weight is 0 are not written.

    Shape: ``photo`` ``[H, W, 3]`` uint8 (not modified), ``matrix`` ``[3, 3]`` photo -> frame,
    ``image`` ``[h, w, 3]`` float in [0, 255], ``alpha`` ``[h, w]`` in [0, 1]; returns ``[H, W, 3]`` uint8.
    """
    out = photo.copy()
    alpha = np.asarray(alpha, dtype=np.float32)
    rows, cols = np.flatnonzero(alpha.any(1)), np.flatnonzero(alpha.any(0))
    if rows.size == 0:
        return out
    h, w = alpha.shape
    box = np.array([[cols[0] - 1.5, rows[0] - 1.5], [cols[-1] + 1.5, rows[0] - 1.5],
                    [cols[0] - 1.5, rows[-1] + 1.5], [cols[-1] + 1.5, rows[-1] + 1.5]])
    inv_box = apply_transform(np.linalg.inv(matrix), box)
    x0, y0 = (max(int(np.floor(v)), 0) for v in inv_box.min(0))
    x1, y1 = min(int(np.ceil(inv_box[:, 0].max())) + 1, photo.shape[1]), min(int(np.ceil(inv_box[:, 1].max())) + 1,
                                                                              photo.shape[0])
    if x1 <= x0 or y1 <= y0:
        return out
    image = np.asarray(image, dtype=np.float32)
    k = 2.0 / _scale(matrix)  # grid resolution to sample from: at most twice the face's photo size
    if k < 1.0:
        gw, gh = max(int(np.ceil(w * k)), 2), max(int(np.ceil(h * k)), 2)
        image = np.stack([resize_float(image[..., c], gw, gh, Image.Resampling.LANCZOS) for c in range(3)], -1)
        alpha = np.clip(resize_float(alpha, gw, gh, Image.Resampling.BOX), 0.0, 1.0)
        shrink = np.array([[gw / w, 0, 0.5 * gw / w - 0.5], [0, gh / h, 0.5 * gh / h - 0.5], [0, 0, 1.0]])
        matrix = shrink @ matrix
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    u = matrix[0, 0] * xs + matrix[0, 1] * ys + matrix[0, 2]
    v = matrix[1, 0] * xs + matrix[1, 1] * ys + matrix[1, 2]
    coords = np.stack([v.ravel(), u.ravel()])
    a = scipy.ndimage.map_coordinates(alpha, coords, order=1, mode="constant", cval=0.0, prefilter=False)
    return blend_sampled(out, y0, x0, image, coords, a.reshape(y1 - y0, x1 - x0))


# ------------------------------------------------------------------- the condition
@dataclass(frozen=True)
class Condition:
    """A condition face in the frame.

    Attributes:
        image: The aligned face. Shape: ``[220, 180, 3]`` uint8.
        landmarks: Its 68 points in the frame. Shape: ``[68, 2]`` float64 ``(x, y)``.
        record: Where it came from, as recorded in each face's manifest row.
    """

    image: np.ndarray
    landmarks: np.ndarray
    record: dict = field(default_factory=dict)


def _aligned(image: np.ndarray, landmarks: np.ndarray, record: dict) -> Condition:
    matrix = celeba_transform(landmarks)
    return Condition(warp_to_frame(image, matrix), apply_transform(matrix, landmarks), record)


def _largest_face(image: np.ndarray, upsample: int) -> np.ndarray | None:
    """dlib's 68 landmarks of the largest HOG detection, or None. Shape: ``[68, 2]``."""
    from falco.faces.detect import get_detector

    det = get_detector("hog", upsample)
    found = [box for box, _ in det.detect(image)]
    if not found:
        return None
    box = max(found, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]))
    return np.asarray(det.landmarks(image, box), dtype=np.float64)


def condition_from_photo(path: str | os.PathLike) -> Condition:
    """The condition given as a photo (of a person who does not exist): its largest face.

    Raises:
        InputError: The photo cannot be read or dlib finds no face in it.
    """
    from falco.errors import ImageLoadError
    from falco.run.image_files import load_image

    try:
        image = load_image(path)
    except ImageLoadError as exc:
        raise InputError(f"condition {str(path)!r}: {exc.reason}") from None
    landmarks = _largest_face(image, upsample=1)
    if landmarks is None:
        raise InputError(f"condition {str(path)!r}: no face found in it")
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return _aligned(image, landmarks, {"source": "file", "path": str(path), "sha256": digest})


def _mean_shape_landmarks(size: int) -> np.ndarray:
    """The mean face placed where FFHQ alignment puts a face in a ``size`` image. Shape: ``[68, 2]``."""
    shape = MEAN_SHAPE * 100.0
    return apply_transform(quad_transform(ffhq_quad(shape), size), shape)


def _to_network(images: list[np.ndarray]) -> torch.Tensor:
    """uint8 frames to upstream's input (``ToTensor`` + ``Normalize(0.5, 0.5)``). Shape: ``[B, 3, 220, 180]``."""
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1)


# ----------------------------------------------------------------------- the method
class AnonyganAnonymizer(Anonymizer):
    """AnonyGAN behind the :class:`~falco.methods.base.Anonymizer` interface.

    Args:
        models: Model set directory (``--models``): the registry's ``anonygan`` checkpoint and,
            for generated conditions, the StyleGAN2 ``generator``.
        seed: Run seed: which fake of the pool each face gets, and the fakes' ``z``.
        device: Where the networks run.
        condition: None (default): StyleGAN2 fakes; or the path of a photo of a person who does
            not exist, used for every face (``--anonygan-condition PATH``).
        conditions: Size of the pool of fakes (each rendered once, on first use).
        bank: A fake bank (``--bank``): the pool is then the bank's fakes, each face getting fake
            ``face_seed(seed, face) % len(bank)`` rendered from its stored code.
        truncation: psi of the fakes toward ``w_avg``, in [0, 1].
        generator: A loaded :class:`~falco.models.anonygan.Generator` (or a path / state dict)
            instead of the model set's.
        stylegan: A loaded StyleGAN2 generator instead of the model set's.
        batch_size: Faces per generator call (1: every face's output independent of the others, bit for bit).
        on_fail: How a face that cannot be aligned is covered (see :func:`~falco.methods.cover.fallback`) or 'skip'.
    """

    name = "anonygan"
    roles = ("anonygan", "generator")

    def __init__(self, models: str | os.PathLike | None = None, seed: int = 0, device: str | torch.device = "cpu", *,
                 condition: str | os.PathLike | None = None, conditions: int = 64, truncation: float = 0.7,
                 generator: Any = None, stylegan: Any = None, batch_size: int = 1, on_fail: str = "blur",
                 bank: str | os.PathLike | None = None) -> None:
        self.on_fail = check_on_fail(on_fail)
        check_seed_and_batch(seed, batch_size)
        if isinstance(conditions, bool) or not isinstance(conditions, int) or conditions < 1:
            raise InputError(f"conditions must be a positive int, got {conditions!r}")
        if isinstance(truncation, bool) or not isinstance(truncation, (int, float)) or not 0 <= truncation <= 1:
            raise InputError(f"truncation must be a number in [0, 1], got {truncation!r}")
        if condition is not None and not isinstance(condition, (str, os.PathLike)):
            raise InputError(f"condition must be the path of a photo or None, got {condition!r}")
        self.device = torch.device(device)
        self.seed, self.batch_size, self.conditions, self.truncation = int(seed), batch_size, conditions, float(truncation)
        self.models = models
        self.G, self.source = load_method_generator("anonygan", models, generator, Generator, load_generator,
                                                    self.device)
        self.fixed = condition_from_photo(condition) if condition is not None else None
        self._stylegan, self._stylegan_source = stylegan, "<in memory>" if stylegan is not None else None
        self._pool: dict[int, Condition] = {}
        self.bank = None
        if bank is not None:
            from falco.bank import Bank

            self.bank = Bank.open(bank)
            self.conditions = len(self.bank)

    @classmethod
    def from_config(cls, cfg, *, device, echo) -> AnonyganAnonymizer:
        """As every method, plus the run's ``--bank`` (when given) as the pool of condition faces."""
        if cfg.bank is not None and "bank" not in cfg.method_options:
            cfg = replace(cfg, method_options={**cfg.method_options, "bank": cfg.bank})
        return super().from_config(cfg, device=device, echo=echo)

    def settings(self) -> dict:
        cond = ({"source": "file", "path": self.fixed.record["path"], "sha256": self.fixed.record["sha256"]}
                if self.fixed is not None else
                {"source": "stylegan2", "pool": self.conditions, "truncation": self.truncation,
                 "bank": str(self.bank.path) if self.bank is not None else None,
                 "choice": "face_seed(seed, face) % pool"})
        return {"method": "anonygan", "seed": self.seed, "condition": cond, "checkpoint": self.source,
                "variant": self.G.init_kwargs, "batch_size": self.batch_size, "on_fail": self.on_fail}

    # -- conditions ---------------------------------------------------------------------------
    def _generator(self):
        if self._stylegan is None:
            from falco.models.zoo import load_role
            from falco.pretrained.modelset import resolve_model

            self._stylegan = load_role("generator", self.models, device=self.device).eval().requires_grad_(False)
            self._stylegan_source = str(resolve_model("generator", self.models))
        return self._stylegan

    @torch.no_grad()
    def _render(self, index: int, attempt: int) -> np.ndarray:
        """Fake ``index`` of the pool (``attempt``: another ``z``), at most 256 px. Shape: ``[S, S, 3]`` uint8."""
        from falco.latent.images import quantize

        G = self._generator()
        state = np.random.SeedSequence([self.seed, index, attempt]).generate_state(2, np.uint32)
        gen = torch.Generator().manual_seed((int(state[0]) << 31) ^ int(state[1]))
        if self.bank is not None and attempt == 0:  # the bank's own fake (other attempts: a fresh z)
            ws = self.bank.ws[index].to(self.device, torch.float32)[None, None].repeat(1, G.num_ws, 1)
        else:
            z = torch.randn(1, G.z_dim, generator=gen).to(self.device)
            ws = G.mapping_ws(z, truncation_psi=self.truncation)
        img = G.synthesis(ws, noise_mode="const")
        u8 = quantize(img)[0].permute(1, 2, 0).cpu().numpy()
        if u8.shape[0] > 256:
            u8 = np.asarray(Image.fromarray(u8).resize((256, 256), Image.Resampling.LANCZOS))
        return u8

    def condition_for(self, face: AlignedFace) -> Condition:
        """The condition face of ``face``: the given photo's, or fake ``face_seed(seed, face) % conditions``."""
        if self.fixed is not None:
            return self.fixed
        index = face_seed(self.seed, face) % self.conditions
        if index not in self._pool:
            for attempt in range(RENDER_ATTEMPTS):
                image = self._render(index, attempt)
                landmarks = _largest_face(image, upsample=1)
                if landmarks is not None:
                    break
            how = "dlib" if landmarks is not None else "mean-shape"
            if landmarks is None:
                landmarks = _mean_shape_landmarks(image.shape[0])
            record = {"source": "bank" if self.bank is not None and attempt == 0 else "stylegan2",
                      "index": index, "seed": self.seed, "attempt": attempt,
                      "truncation": self.truncation, "landmarks": how, "generator": self._stylegan_source}
            self._pool[index] = _aligned(image, landmarks, record)
        return self._pool[index]

    # -- the network --------------------------------------------------------------------------
    @staticmethod
    def _source(photo: np.ndarray, face: AlignedFace) -> dict[str, Any]:
        matrix = celeba_transform(face.landmarks)
        return {"matrix": matrix, "image": warp_to_frame(photo, matrix),
                "landmarks": apply_transform(matrix, face.landmarks)}

    @torch.no_grad()
    def generate(self, sources: list[dict[str, Any]], conds: list[Condition]) -> list[tuple[np.ndarray, np.ndarray]]:
        """AnonyGAN's faces for prepared sources and their conditions.

        Returns:
            ``(rgb, mask)`` per face in the frame: ``[220, 180, 3]`` float in [0, 255] and
            ``[220, 180]`` {0, 1} (the region to paste).
        """
        out = []
        reduced = self.G.reduced_landmarks
        for i in range(0, len(sources), self.batch_size):
            src, cond = sources[i : i + self.batch_size], conds[i : i + self.batch_size]
            mask = face_mask(np.stack([s["landmarks"] for s in src]))
            source, condition = _to_network([s["image"] for s in src]), _to_network([c.image for c in cond])
            image_input = torch.cat((condition, source * (1 - mask)), 1) if self.G.ch_input == 6 else condition
            lms = encode_landmarks(np.stack([c.landmarks for c in cond]), np.stack([s["landmarks"] for s in src]),
                                   reduced=reduced)
            fake = self.G(image_input.to(self.device), lms.to(self.device)).float().cpu()
            rgb = ((fake + 1) * 127.5).clamp(0, 255).permute(0, 2, 3, 1).numpy()
            out += [(rgb[j], mask[j, 0].numpy()) for j in range(len(src))]
        return out

    def apply(self, photo: np.ndarray, faces: list[AlignedFace], results: list) -> tuple[np.ndarray, list[dict]]:
        photo = check_apply_args(photo, faces, results)
        sources, failed = prepare_all(faces, lambda face: self._source(photo, face))
        ok = [i for i in range(len(faces)) if i not in failed]
        conds = {i: self.condition_for(faces[i]) for i in ok}
        generated = dict(zip(ok, self.generate([sources[i] for i in ok], [conds[i] for i in ok])))

        def paste(out: np.ndarray, i: int) -> tuple[np.ndarray, dict]:
            rgb, mask = generated[i]
            record = {"method": "anonygan", "status": "done", "condition": dict(conds[i].record),
                      "anonygan_frame": sources[i]["matrix"][:2].round(6).tolist()}
            return paste_warped(out, sources[i]["matrix"], rgb, mask), record

        return paste_or_cover(photo, faces, failed, self.on_fail, paste)
