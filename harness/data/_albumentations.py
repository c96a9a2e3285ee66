"""albumentations, imported once with its update check off: import it from here, never directly.

albumentations asks PyPI for its latest version when first imported unless NO_ALBUMENTATIONS_UPDATE
is set. The variable is set for that import only (harness/environment.py), so nothing is left set.
"""

from __future__ import annotations

from harness.environment import ALBUMENTATIONS_OFFLINE, environment

with environment(ALBUMENTATIONS_OFFLINE):
    import albumentations as A
    from albumentations.pytorch import ToTensorV2

__all__ = ["A", "ToTensorV2"]
