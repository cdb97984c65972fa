"""motia: video outpainting by input-specific adaptation (MOTIA) on SD1.5 + ControlNet + AnimateDiff.

The package imports without a GPU and without optional extras; heavy modules
(diffusers, transformers) are imported by the submodules that need them.
"""

__version__ = "0.1.0"
