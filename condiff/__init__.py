"""condiff: image manipulation with conditional diffusion models.

See README.md; the diffusion core follows the σ-space denoiser contract of
``condiff.denoisers`` (DESIGN.md §3).
"""

__version__ = "0.1.0"
