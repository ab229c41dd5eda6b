"""Split cases into train / validation / test by case, reproducibly (fixed seed), or as the dataset gives it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .data import Case, DataError, SPLITS


def split_cases(cases: list[Case], fractions: tuple[float, float, float] = (0.7, 0.15, 0.15), seed: int = 0,
                stratify: bool = False) -> dict:
    """``{"train": [ids], "validation": [ids], "test": [ids], "method": ..., "seed": ...}``.

    When the dataset names a split for every case (Decathlon ``validation``/``test`` lists, a CSV
    ``split`` column) that split is used as it is. Otherwise ids are shuffled with ``seed``
    (per class when ``stratify``), and at least one case goes to validation when there are two or more.
    """
    ids = [c.id for c in cases]
    if len(set(ids)) != len(ids):
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        raise DataError(f"case ids must be unique; repeated: {', '.join(dupes[:5])}")
    if cases and all(c.split for c in cases):
        out = {s: [c.id for c in cases if c.split == s] for s in SPLITS}
        if not out["train"]:
            raise DataError("the dataset's own split has no training cases")
        return {**out, "method": "given by the dataset", "seed": None}
    if sum(fractions) <= 0 or min(fractions) < 0:
        raise DataError(f"split fractions {fractions} must be non-negative and not all zero")
    total = sum(fractions)
    fractions = tuple(f / total for f in fractions)  # type: ignore[assignment]
    rng = np.random.default_rng(seed)
    groups: dict = {}
    for c in sorted(cases, key=lambda c: c.id):
        groups.setdefault(c.target if stratify else None, []).append(c.id)
    out = {s: [] for s in SPLITS}
    for key in sorted(groups, key=lambda k: (k is None, k)):
        members = list(groups[key])
        rng.shuffle(members)
        n = len(members)
        n_val = int(round(n * fractions[1]))
        n_test = int(round(n * fractions[2]))
        if n >= 2 and fractions[1] > 0 and n_val == 0:
            n_val = 1
        if n >= 3 and fractions[2] > 0 and n_test == 0:
            n_test = 1
        while n - n_val - n_test < 1 and (n_test or n_val):
            if n_test:
                n_test -= 1
            else:
                n_val -= 1
        n_train = n - n_val - n_test
        out["train"] += members[:n_train]
        out["validation"] += members[n_train : n_train + n_val]
        out["test"] += members[n_train + n_val : n_train + n_val + n_test]
    method = f"random by case, fractions {', '.join(f'{f:.2f}' for f in fractions)}" + (", stratified by class" if stratify else "")
    return {**{s: sorted(v) for s, v in out.items()}, "method": method, "seed": seed}


def save_split(split: dict, path: Path) -> None:
    path.write_text(json.dumps(split, indent=1))


def load_split(path: Path, cases: list[Case]) -> dict:
    """A saved split, checked against the cases at hand (for resuming)."""
    split = json.loads(path.read_text())
    known = {c.id for c in cases}
    missing = [i for s in SPLITS for i in split.get(s, []) if i not in known]
    if missing:
        raise DataError(f"{path}: the saved split names cases not in the data ({', '.join(missing[:5])}); train into a new folder")
    return split
