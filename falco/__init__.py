"""falco: attribute-preserving face anonymization (FALCO, Barattin et al., CVPR 2023)."""

__version__ = "0.1.0"
