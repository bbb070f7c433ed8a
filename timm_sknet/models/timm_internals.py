"""The one place timm-sknet imports from timm's private modules (``timm.*._*``).

timm 1.0.31 has no public name for these; each line says what to switch to once it has.
"""
# timm's own models import it from here for forward_intermediates; switch to timm.models.feature_take_indices
# (or timm.layers) if timm re-exports it.
from timm.models._features import feature_take_indices  # noqa: F401

__all__ = ['feature_take_indices']
