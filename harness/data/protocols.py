"""A dataset's published split by name (`protocol.name: eva`): the rows it keeps, its fixed test
part, the harness's patient-grouped folds inside its training part, and a note on what partial
data lacks of it."""

from __future__ import annotations

import numpy as np
import pandas as pd

from harness.errors import InputError

from .datasets import DatasetSpec, NamedProtocol, dataset
from .splits import Split, fixed_test_split


def named_protocol(spec: DatasetSpec, name: str) -> NamedProtocol:
    """Return the published protocol `name` of `spec`'s dataset; InputError when it has none."""
    entry = dataset(spec.name)
    if name not in entry.protocols:
        known = ", ".join(["patient", *sorted(entry.protocols)])
        raise InputError(f"protocol {name}: not a protocol of dataset {spec.name} (its protocols: {known})")
    return entry.protocols[name]


def named_split(
    manifest: pd.DataFrame, spec: DatasetSpec, name: str, *, folds: int, seed: int
) -> tuple[pd.DataFrame, Split, list[str]]:
    """Return the rows protocol `name` keeps of `manifest`, their split (its test part as the test
    set, `folds` patient-grouped folds in the rest) and notes on what the data lack of it.

    Raises InputError in one line when no image fits the protocol, when either part is empty, or
    when the part sizes differ from the full release's and `spec.allow_subset` is off.
    """
    protocol = named_protocol(spec, name)
    label = spec.label or next(iter(dataset(spec.name).labels))
    if label != protocol.label:
        raise InputError(f"protocol {name}: dataset.label is {label}; {name} labels {spec.name} by {protocol.label}")
    kept, test = protocol.assign(manifest)
    what = f"{protocol.description} ({protocol.source})"
    train_n, test_n = int((~test).sum()), int(test.sum())
    if train_n == 0 or test_n == 0:
        raise InputError(
            f"protocol {name}: {len(manifest):,} images of {spec.name} give {train_n} in its training and "
            f"{test_n} in its test part, and both need images; {what}"
        )
    full = protocol.counts
    if (train_n, test_n) != (full["train"], full["test"]) and not spec.allow_subset:
        raise InputError(
            f"protocol {name}: {train_n:,} training and {test_n:,} test images, the release gives "
            f"{full['train']:,} and {full['test']:,} ({protocol.source}). For a sample set dataset.allow_subset: true"
        )
    split = fixed_test_split(kept, test, folds=folds, seed=seed, what=what)
    return kept, split, _notes(kept, test, protocol, name, spec)


def _notes(kept: pd.DataFrame, test: np.ndarray, protocol: NamedProtocol, name: str, spec: DatasetSpec) -> list[str]:
    """Return the lines saying what these data lack of the protocol (images, classes) and which
    patient groups lie on both of its sides."""
    notes = []
    full, train_n, test_n = protocol.counts, int((~test).sum()), int(test.sum())
    if (train_n, test_n) != (full["train"], full["test"]):
        notes.append(
            f"protocol {name}: {train_n:,} of {full['train']:,} training and {test_n:,} of {full['test']:,} "
            f"test images of the release are here ({protocol.description})"
        )
    classes = dataset(spec.name).labels[protocol.label]
    for part, rows in (("training", ~test), ("test", test)):
        present = set(kept.label[rows])
        missing = [c for k, c in enumerate(classes) if k not in present]
        if missing:
            notes.append(f"protocol {name}: no {', '.join(missing)} image in its {part} part on these data")
    both = sorted(set(kept.patient_id[test]) & set(kept.patient_id[~test]))
    if both:
        notes.append(
            f"protocol {name}: {len(both)} patient group(s) by the harness's grouping lie on both sides of its "
            f"split, which {protocol.source.split()[0]} draws by another id: {', '.join(map(str, both))}"
        )
    return notes
