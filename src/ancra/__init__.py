"""ancra: adversarial training with Asymmetric Negative Contrast and Reverse Attention (ANCRA)."""

__version__ = "0.1.0"
