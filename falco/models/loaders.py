"""``load_generator``: any StyleGAN2 checkpoint layout in, a ready :class:`Generator` out.

Layouts understood (the architecture is inferred from tensor shapes, no config needed):

* rosinality ``stylegan2-pytorch`` checkpoints: top-level ``g_ema`` (+ optional ``latent_avg``),
  or a bare rosinality state dict;
* e4e / pSp checkpoints: ``state_dict`` with ``decoder.*`` keys, plus ``latent_avg``;
* NVIDIA stylegan2-ada / stylegan3-repo StyleGAN2 ``.pkl`` files (``G_ema`` read by
  :mod:`falco.models.nvidia_pickle`, which executes nothing) and their state dicts
  (``mapping.fcN``, ``synthesis.bR.*``), converted to rosinality's layout;
* genforce checkpoints (FALCO's own ``stylegan2_ffhq1024.pth``): ``generator_smooth`` (the EMA
  weights) of ``{generator, discriminator, generator_smooth}``, or a bare genforce state dict
  (``mapping.denseN``, ``synthesis.layerN``), converted by :mod:`falco.models.genforce`.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Mapping

import torch

from falco.errors import CheckpointError
from falco.models import genforce, nvidia_pickle
from falco.models.stylegan2 import Generator, make_kernel

log = logging.getLogger(__name__)

Source = str | Path | Mapping[str, Any]


def _read_checkpoint(path: Path) -> Any:
    """Read a checkpoint without executing code: NVIDIA pickles or ``torch.load(weights_only=True)``."""
    if not path.is_file():
        raise CheckpointError(path, "file not found")
    with open(path, "rb") as f:
        head = f.read(4)
    if path.suffix == ".pkl" and not head.startswith(b"PK"):
        return nvidia_pickle.load_nvidia_pickle(path)
    from falco.models._checkpoint import load_checkpoint

    return load_checkpoint(path)


def _nvidia_to_rosinality(sd: Mapping[str, torch.Tensor], source: str) -> tuple[dict, torch.Tensor | None]:
    """Convert an NVlabs ``G_ema`` state dict to rosinality key names and conventions."""
    out: dict[str, torch.Tensor] = {}
    fc = sorted(int(m.group(1)) for k in sd if (m := re.fullmatch(r"mapping\.fc(\d+)\.weight", k)))
    for i in fc:
        out[f"style.{i + 1}.weight"] = sd[f"mapping.fc{i}.weight"]
        out[f"style.{i + 1}.bias"] = sd[f"mapping.fc{i}.bias"]
    resolutions = sorted(int(m.group(1)) for k in sd if (m := re.fullmatch(r"synthesis\.b(\d+)\.torgb\.weight", k)))
    if not fc or not resolutions or resolutions[0] != 4:
        raise CheckpointError(source, "NVIDIA layout without mapping.fcN or synthesis.b4 tensors")

    # Up-sampling layers: NVlabs runs conv_transpose2d with the weight as stored (its
    # ``flip_weight=False`` cancels the wrapper's flip), exactly like rosinality, so the
    # kernels copy over unflipped. (Only TF-era weights need a spatial flip; the parity
    # test against the NVlabs fixture fails by ~4e-2 if one is applied here.)
    def layer(dst: str, src: str, noise_idx: int) -> None:
        out[f"{dst}.conv.weight"] = sd[f"{src}.weight"].unsqueeze(0)
        out[f"{dst}.conv.modulation.weight"] = sd[f"{src}.affine.weight"]
        out[f"{dst}.conv.modulation.bias"] = sd[f"{src}.affine.bias"]
        out[f"{dst}.noise.weight"] = sd[f"{src}.noise_strength"].reshape(1)
        out[f"{dst}.activate.bias"] = sd[f"{src}.bias"]
        noise = sd[f"{src}.noise_const"]
        out[f"noises.noise_{noise_idx}"] = noise.reshape(1, 1, *noise.shape[-2:])

    def torgb(dst: str, src: str) -> None:
        out[f"{dst}.conv.weight"] = sd[f"{src}.weight"].unsqueeze(0)
        out[f"{dst}.conv.modulation.weight"] = sd[f"{src}.affine.weight"]
        out[f"{dst}.conv.modulation.bias"] = sd[f"{src}.affine.bias"]
        out[f"{dst}.bias"] = sd[f"{src}.bias"].reshape(1, 3, 1, 1)

    if "synthesis.b4.resample_filter" in sd:
        f = sd["synthesis.b4.resample_filter"].float()
        if not torch.allclose(f / f.sum(), make_kernel([1, 3, 3, 1]), atol=1e-6):
            raise CheckpointError(source, "only the [1,3,3,1] resampling filter is supported")
    blur = make_kernel([1, 3, 3, 1]) * 4
    try:
        out["input.input"] = sd["synthesis.b4.const"].unsqueeze(0)
        layer("conv1", "synthesis.b4.conv1", 0)
        torgb("to_rgb1", "synthesis.b4.torgb")
        for i, res in enumerate(resolutions[1:]):
            layer(f"convs.{2 * i}", f"synthesis.b{res}.conv0", 2 * i + 1)
            out[f"convs.{2 * i}.conv.blur.kernel"] = blur.clone()
            layer(f"convs.{2 * i + 1}", f"synthesis.b{res}.conv1", 2 * i + 2)
            torgb(f"to_rgbs.{i}", f"synthesis.b{res}.torgb")
            out[f"to_rgbs.{i}.upsample.kernel"] = blur.clone()
    except KeyError as exc:
        raise CheckpointError(source, f"NVIDIA layout is missing tensor {exc.args[0]!r}") from None
    return out, sd.get("mapping.w_avg")


def _infer_kwargs(state: Mapping[str, torch.Tensor], source: str) -> dict:
    """Generator constructor arguments from a rosinality-layout state dict."""
    try:
        mlp = sorted(int(m.group(1)) for k in state if (m := re.fullmatch(r"style\.(\d+)\.weight", k)))
        w_dim = int(state["style.1.weight"].shape[1])
        num_rgbs = len([k for k in state if re.fullmatch(r"to_rgbs\.\d+\.conv\.weight", k)])
        channels = {4: int(state["input.input"].shape[1])}
        for i in range(num_rgbs):
            channels[8 * 2**i] = int(state[f"convs.{2 * i}.conv.weight"].shape[1])
    except KeyError as exc:
        raise CheckpointError(source, f"rosinality layout is missing tensor {exc.args[0]!r}") from None
    if mlp != list(range(1, len(mlp) + 1)):
        raise CheckpointError(source, f"mapping layers style.N are not contiguous: {mlp}")
    return dict(img_resolution=4 * 2**num_rgbs, w_dim=w_dim, num_mapping_layers=len(mlp), channels=channels)


def _strip(sd: Mapping[str, Any], prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def _is_nvidia(sd: Mapping[str, Any]) -> bool:
    return any(k.startswith("synthesis.b4.") for k in sd) and any(k.startswith("mapping.fc") for k in sd)


def _is_rosinality(sd: Mapping[str, Any]) -> bool:
    return "input.input" in sd and "style.1.weight" in sd


def generator_state(ckpt: Any, source: str) -> tuple[dict, torch.Tensor | None, str]:
    """Find the generator in a loaded checkpoint and return it in rosinality layout.

    Returns:
        ``(state_dict, w_avg_or_None, layout_name)``.
    """
    if not isinstance(ckpt, Mapping):
        raise CheckpointError(source, f"expected a dict-like checkpoint, got {type(ckpt).__name__}")
    if "G_ema" in ckpt:  # NVIDIA pickle (PersistentObject) or a dict holding its state dict
        g = ckpt["G_ema"]
        sd = nvidia_pickle.module_state_dict(g) if isinstance(g, (nvidia_pickle.PersistentObject, nvidia_pickle.OpaqueObject)) else g
        state, w_avg = _nvidia_to_rosinality(sd, source)
        return state, w_avg, "nvidia"
    if "G_ema_state_dict" in ckpt:
        state, w_avg = _nvidia_to_rosinality(ckpt["G_ema_state_dict"], source)
        return state, w_avg, "nvidia"
    if "g_ema" in ckpt:
        return dict(ckpt["g_ema"]), ckpt.get("latent_avg"), "rosinality"
    if genforce.is_genforce_checkpoint(ckpt):
        state, w_avg = genforce.genforce_generator_state(ckpt, source)
        return state, w_avg, "genforce"
    sd = ckpt.get("state_dict", ckpt)
    if isinstance(sd, Mapping) and any(k.startswith("decoder.") for k in sd):
        return _strip(sd, "decoder."), ckpt.get("latent_avg"), "e4e"
    if _is_nvidia(ckpt):
        state, w_avg = _nvidia_to_rosinality(ckpt, source)
        return state, w_avg, "nvidia"
    if _is_rosinality(ckpt):
        return dict(ckpt), ckpt.get("latent_avg"), "rosinality"
    keys = ", ".join(list(ckpt)[:6])
    raise CheckpointError(
        source,
        "not a StyleGAN2 generator checkpoint (expected rosinality 'g_ema', e4e 'decoder.*', "
        "NVIDIA 'G_ema' / 'mapping.fcN' + 'synthesis.bR', or genforce 'generator_smooth' keys; "
        f"found: {keys})",
    )


def nvidia_conv_clamp(ckpt: Any) -> float | None:
    """``synthesis_kwargs.conv_clamp`` recorded with an NVIDIA generator (None elsewhere or when unset)."""
    if not isinstance(ckpt, Mapping):
        return None
    g = ckpt.get("G_ema")
    if isinstance(g, nvidia_pickle.PersistentObject):
        kwargs = nvidia_pickle.init_kwargs(g)
    elif isinstance(ckpt.get("init_kwargs"), Mapping):
        kwargs = dict(ckpt["init_kwargs"])
    else:
        return None
    clamp = dict(kwargs.get("synthesis_kwargs") or {}).get("conv_clamp")
    return None if clamp is None else float(clamp)


def load_generator(source: Source, *, device: str | torch.device = "cpu") -> Generator:
    """Load a StyleGAN2 generator from a file or an in-memory checkpoint.

    Args:
        source: Path to a ``.pt``/``.pth``/``.pkl`` checkpoint, or a loaded checkpoint dict
            (any layout listed in the module docstring).
        device: Where to put the model.

    Returns:
        A :class:`Generator` in eval mode with ``w_avg`` set (from the checkpoint's
        ``latent_avg`` / ``mapping.w_avg`` / ``truncation.w_avg``; computed from 10,000
        seeded samples with a warning when the checkpoint has none) and ``source_layout``
        naming the layout read. A genforce generator also gets ``truncation_layers`` as
        genforce's ``get_w`` truncates (every layer up to 1024 px).

    Raises:
        CheckpointError: unreadable file, unknown layout, or tensors of unexpected shapes.
    """
    name = str(source) if isinstance(source, (str, Path)) else "<state dict>"
    ckpt = _read_checkpoint(Path(source)) if isinstance(source, (str, Path)) else source
    state, w_avg, layout = generator_state(ckpt, name)
    G = Generator(**_infer_kwargs(state, name), conv_clamp=None if layout == "genforce" else nvidia_conv_clamp(ckpt))
    expected = G.state_dict()
    expected.pop("w_avg")
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected) - {"w_avg"})
    if missing or unexpected:
        raise CheckpointError(name, f"{layout} generator keys do not match: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for key, tensor in expected.items():
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise CheckpointError(name, f"tensor {key!r} has shape {list(state[key].shape)}, expected {list(tensor.shape)}")
    G.load_state_dict({k: state[k] for k in expected}, strict=False)
    if w_avg is not None:
        w_avg = torch.as_tensor(w_avg).float()
        w_avg = w_avg.reshape(-1, G.w_dim)[0] if w_avg.numel() != G.w_dim else w_avg.reshape(G.w_dim)
        G.w_avg.copy_(w_avg)
    else:
        log.warning("%s: no latent_avg/w_avg in the checkpoint; computing w_avg from 10,000 seeded samples", name)
        G.w_avg.copy_(G.mean_w(10_000))
    G.source_layout = layout
    if layout == "genforce":
        G.truncation_layers = genforce.genforce_truncation_layers(G.num_ws)
    return G.eval().requires_grad_(False).to(device)
