"""Load the network that fills a role (generator, encoder, identity, attributes) from a model set."""

from __future__ import annotations

import os
from typing import Any

import torch

from falco.errors import InputError
from falco.pretrained.modelset import is_tiny, resolve_model

TINY_WARNING = "tiny random model set: outputs are not meaningful (run `falco models download` for real weights)"


def resolve_device(device: str = "auto") -> torch.device:
    """``'auto'`` -> CUDA when available, else CPU; validates explicit choices."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise InputError(f"--device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {device!r}: CUDA is not available on this machine")
    return dev


def load_role(role: str, models: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> Any:
    """Load the model set's network for ``role``.

    Returns:
        ``generator`` -> Generator; ``encoder`` -> (Encoder4Editing, latent_avg);
        ``identity`` -> ArcFace identity encoder; ``attributes`` -> FaRL encoder.
    """
    path = resolve_model(role, models)
    if role == "generator":
        from falco.models.loaders import load_generator

        return load_generator(path, device=device)
    if role == "encoder":
        from falco.models.e4e import load_e4e

        E, latent_avg = load_e4e(path)
        return E.to(device).eval(), latent_avg.to(device)
    if role == "identity":
        from falco.models.arcface import load_arcface

        return load_arcface(path).to(device).eval()
    if role == "attributes":
        from falco.models.farl import load_farl

        return load_farl(path).to(device).eval()
    raise InputError(f"role must be generator, encoder, identity or attributes, got {role!r}")


def tiny_notice(models: str | os.PathLike | None = None) -> str | None:
    """The warning to print when the model set is a tiny random one, else None."""
    return TINY_WARNING if is_tiny(models) else None
