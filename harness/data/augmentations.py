"""Training augmentations by name, each in one place: its per-image form (albumentations steps), the
Keras ImageDataGenerator its source ran where it has one, and whether a batched form exists
(flips and 90-degree turns a batch at a time; harness/data/batched.py computes it).

albumentations (through `_albumentations`, its update check off) and OpenCV are imported only when
a per-image pipeline is built, so the batched path (bench/gpu.py on a bare GPU machine) needs neither.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Literal, Protocol

from .keras_generators import GeneratorArgs

if TYPE_CHECKING:
    from ._albumentations import A


class AugmentParams(Protocol):
    """What an augmentation reads of a run's training settings (TrainParams has all of it)."""

    @property
    def augment(self) -> str: ...
    @property
    def rotation(self) -> str: ...
    @property
    def noise_std(self) -> float: ...
    @property
    def intensity(self) -> float: ...
    @property
    def input_hw(self) -> tuple[int, int]: ...


# The batched form: only the resize ("identity"), flips on both axes at random ("flips"), and
# 90-degree turns too ("dihedral").
BatchedForm = Literal["identity", "flips", "dihedral"]


@dataclass(frozen=True)
class Augmentation:
    """One named augmentation: `per_image` returns its albumentations steps for a run's settings;
    `keras` is the ImageDataGenerator its source ran (what it is under Keras semantics); `batched`
    is its batched torch form (None: it has none); `bag_turns`: a bag's patches are each turned
    and flipped at random."""

    name: str
    per_image: Callable[[AugmentParams], list[A.BasicTransform]]
    keras: GeneratorArgs | None = None
    batched: BatchedForm | None = None
    bag_turns: bool = False

    def has_batched_form(self, *, keras: bool, square: bool) -> bool:
        """Return True when the batched path computes this augmentation: its Keras generator under
        Keras semantics, else its flips (90-degree turns need square patches)."""
        if keras and self.keras is not None:
            return True
        return self.batched in ("identity", "flips") or (self.batched == "dihedral" and square)


def _flips(params: AugmentParams) -> list[A.BasicTransform]:
    from ._albumentations import A

    return [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)]


def _dihedral(params: AugmentParams) -> list[A.BasicTransform]:
    from ._albumentations import A

    return [*_flips(params), A.RandomRotate90(p=0.5)]


def _rotation(mode: str) -> A.BasicTransform:
    import cv2

    from ._albumentations import A

    if mode == "flip180":
        # 0 or 180 degrees keeps a 384x512 image's aspect; with the flips, the rectangle's symmetries.
        return A.Rotate(limit=(180, 180), p=0.5, border_mode=cv2.BORDER_REFLECT_101)
    return A.Rotate(limit=15 if mode == "small15" else 180, p=1.0, border_mode=cv2.BORDER_REFLECT_101)


def _gusa(params: AugmentParams) -> list[A.BasicTransform]:
    from ._albumentations import A

    # 001: mirroring, random rotations, additive noise, intensity change (magnitudes searched, §2.7).
    return [
        *_flips(params),
        _rotation(params.rotation),
        A.GaussNoise(std_range=(0.0, params.noise_std), p=1.0 if params.noise_std > 0 else 0.0),
        A.RandomBrightnessContrast(
            brightness_limit=params.intensity, contrast_limit=0.0, p=1.0 if params.intensity > 0 else 0.0
        ),
    ]


def _essex2023(params: AugmentParams) -> list[A.BasicTransform]:
    import cv2

    from ._albumentations import A

    # 003 §3.3: rotation up to 180, flips, shift and zoom 10 %, shear 10 degrees, brightness 20 %.
    return [
        A.Affine(
            rotate=(-180, 180),
            translate_percent=(-0.1, 0.1),
            scale=(0.9, 1.1),
            shear=(-10, 10),
            border_mode=cv2.BORDER_REPLICATE,
            p=1.0,
        ),
        *_flips(params),
        A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.0, p=1.0),
    ]


def _pis(params: AugmentParams) -> list[A.BasicTransform]:
    import cv2

    from ._albumentations import A

    # Keras ImageDataGenerator of the CancerNet tutorial: rotation 20, zoom 0.05, shift 0.1,
    # shear 0.05 degrees, fill_mode="nearest" (= replicate the border).
    return [
        A.Affine(
            rotate=(-20, 20),
            scale=(0.95, 1.05),
            translate_percent=(-0.1, 0.1),
            shear=(-0.05, 0.05),
            border_mode=cv2.BORDER_REPLICATE,
            p=1.0,
        ),
        *_flips(params),
    ]


AUGMENTATIONS: dict[str, Augmentation] = {
    a.name: a
    for a in (
        Augmentation("none", lambda params: [], batched="identity"),
        Augmentation("flips", _flips, batched="flips"),
        Augmentation("dihedral", _dihedral, batched="dihedral", bag_turns=True),
        Augmentation("gusa", _gusa),
        # The CancerNet tutorial's (S-PIS) and 003 §3.3's generators name exactly ImageDataGenerator's arguments.
        Augmentation(
            "pis",
            _pis,
            keras=GeneratorArgs(
                rotation_range=20,
                width_shift_range=0.1,
                height_shift_range=0.1,
                shear_range=0.05,
                zoom_range=0.05,
                horizontal_flip=True,
                vertical_flip=True,
            ),
        ),
        Augmentation(
            "essex2023",
            _essex2023,
            keras=GeneratorArgs(
                rotation_range=180,
                width_shift_range=0.1,
                height_shift_range=0.1,
                shear_range=10,
                zoom_range=0.1,
                horizontal_flip=True,
                vertical_flip=True,
                brightness_range=(0.8, 1.2),
            ),
        ),
    )
}
# Old names still read (experiment files, stores of earlier sweeps) -> the one name now.
ALIASES = {"flips_rot90": "dihedral"}


def augmentation(name: str) -> Augmentation:
    """Return the augmentation called `name` (an old alias gives its current entry, with a
    deprecation warning); raises ValueError naming the known ones."""
    return AUGMENTATIONS[canonical_name(name)]


def canonical_name(name: str) -> str:
    """Return the one name of augmentation `name`, warning when `name` is an old alias; raises
    ValueError naming the known ones for a name that is neither."""
    if name in ALIASES:
        warnings.warn(
            f"augment {name!r} is an old name of {ALIASES[name]!r}; write {ALIASES[name]!r}",
            FutureWarning,
            stacklevel=2,
        )
        return ALIASES[name]
    if name not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {name!r}; known: {', '.join(AUGMENTATIONS)}")
    return name
