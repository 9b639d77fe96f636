"""Imagen (Saharia et al. 2022) in PyTorch: text encoders, Efficient U-Nets, diffusion, samplers, the cascade.

This package imports nothing from bench/, drawbench/ or reports/.
"""

from imagen.errors import UserError

__all__ = ["UserError"]
__version__ = "0.2.0"
