"""How normal records are dealt into the splits that train, stop and calibrate the models.

    train          fits the weights
    validation     early stopping, and the promotion gates (FPR on unseen normals)
    calibration A  per-score conformal p-values and thresholds
    calibration B  the combined statistic's own threshold

A curated calibration set splits into holdout / calibration A / calibration B in the same
proportions; a cross-fitted ensemble deals every row into one held-out part and one fold.
Every split gets at least ``MIN_PART_ROWS`` rows, or training stops before it starts.
"""
from __future__ import annotations

import math

import numpy as np

from vigil.models.config import DataError, TrainConfig


def _conformal_need(cfg: TrainConfig) -> int:
    """Rows a calibration split needs so that a threshold at every target can flag."""
    # A conformal threshold at rate alpha needs at least 1/alpha - 1 calibration values,
    # else nothing can be flagged.
    return math.ceil(1 / min(cfg.target_fprs))


def _calibration_floor(n: int, cfg: TrainConfig) -> int:
    # Small data sets give calibration the conformal need, as long as half of the rows are
    # left for training and validation.  Smaller ones keep the fractions: their thresholds
    # are out of reach either way (and say so).
    need = _conformal_need(cfg)
    return need if n // 4 >= need else 0     # below that, the floor would buy nothing


def _take(perm: np.ndarray, sizes: dict[str, int], rest: str) -> dict[str, np.ndarray]:
    """Consecutive slices of ``perm`` of the given sizes; ``rest`` gets what is left."""
    out, start = {}, 0
    for name, size in sizes.items():
        out[name] = np.sort(perm[start:start + size])
        start += size
    out[rest] = np.sort(perm[start:])
    return out


def split_indices(n: int, cfg: TrainConfig, calibrate: bool = True) -> dict[str, np.ndarray]:
    """Disjoint train / validation / calibration_a / calibration_b index arrays.

    ``calibrate=False`` (calibration comes from a curated set): train and validation only.
    """
    perm = np.random.default_rng(cfg.seed).permutation(n)
    out = _take(perm, _held_out_sizes(n, cfg, calibrate), rest="train")
    _require_rows(out, n, cfg, calibrate)
    return _bounded(out, cfg)


def _held_out_sizes(n: int, cfg: TrainConfig, calibrate: bool) -> dict[str, int]:
    sizes = {"validation": int(round(n * cfg.val_fraction))}
    if calibrate:
        floor = _calibration_floor(n, cfg)
        sizes["calibration_a"] = max(int(round(n * cfg.calib_fraction)), floor)
        sizes["calibration_b"] = max(int(round(n * cfg.combined_calib_fraction)), floor)
    return sizes


MIN_PART_ROWS = 2   # every split needs two rows: a loss to stop on, a quantile to take


def minimum_records(cfg: TrainConfig, calibrate: bool = True) -> int:
    """The fewest normal records whose train and held-out splits all get ``MIN_PART_ROWS``."""
    for n in range(MIN_PART_ROWS * 4, 10_000):
        parts = _take(np.arange(n), _held_out_sizes(n, cfg, calibrate), rest="train")
        if min(len(part) for part in parts.values()) >= MIN_PART_ROWS:
            return n
    raise DataError(f"no record count gives every split {MIN_PART_ROWS} rows with {cfg}")


def _require_rows(splits: dict[str, np.ndarray], n: int, cfg: TrainConfig, calibrate: bool) -> None:
    small = {name: len(part) for name, part in splits.items() if len(part) < MIN_PART_ROWS}
    if small:
        fewest = min(small.values())
        raise DataError(f"only {n} normal records: the {' and '.join(small)} "
                         f"split{'s' if len(small) > 1 else ''} would get {fewest} "
                         f"row{'' if fewest == 1 else 's'}; training needs at least "
                         f"{minimum_records(cfg, calibrate)} normal records")


def cross_fit_splits(n: int, cfg: TrainConfig, folds: int) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
    """Validation / calibration_a / calibration_b over all ``n`` rows, and ``folds`` folds.

    Member ``k`` trains on every row outside fold ``k``, and the rows of fold ``k`` are
    scored by member ``k`` alone, so each held-out score still comes from a model that
    never saw the row.  The three held-out parts keep ``split_indices``' proportions, and
    every fold holds its share of each.
    """
    perm = np.random.default_rng(cfg.seed).permutation(n)
    # The parts are consecutive slices of perm, so dealing perm round-robin gives every
    # fold its share of each part.
    return (_bounded(_held_out_parts(perm, cfg, "validation"), cfg),
            [np.sort(perm[k::folds]) for k in range(folds)])


def train_split_size(n: int, cfg: TrainConfig, calibrate: bool = True) -> int:
    """Rows of ``n`` that ``fit`` trains the weights on (``split_indices``' train split)."""
    return len(split_indices(n, cfg, calibrate)["train"])


def _bounded(splits: dict[str, np.ndarray], cfg: TrainConfig) -> dict[str, np.ndarray]:
    """Bounded calibration sets keep the manifest small on huge inputs."""
    for name in ("calibration_a", "calibration_b"):
        if name in splits:
            splits[name] = splits[name][: cfg.max_calibration_rows]
    return splits


def calibration_rows_needed(cfg: TrainConfig) -> int:
    """Smallest curated calibration set ``split_calibration`` accepts."""
    share = (cfg.calib_fraction + cfg.combined_calib_fraction) / _held_out_fraction(cfg)
    return math.ceil(2 * _conformal_need(cfg) / share)


def _held_out_fraction(cfg: TrainConfig) -> float:
    return cfg.val_fraction + cfg.calib_fraction + cfg.combined_calib_fraction


def split_calibration(n: int, cfg: TrainConfig) -> dict[str, np.ndarray]:
    """A curated normal set split into holdout / calibration_a / calibration_b.

    The three parts keep the proportions the held-out splits have in ``split_indices``.
    """
    if n < calibration_rows_needed(cfg):
        raise DataError(f"the calibration input has {n} normal records; at target FPR "
                         f"{min(cfg.target_fprs)} it needs at least {calibration_rows_needed(cfg)}")
    return _bounded(_held_out_parts(np.random.default_rng(cfg.seed).permutation(n), cfg, "holdout"), cfg)


def _held_out_parts(perm: np.ndarray, cfg: TrainConfig, first: str) -> dict[str, np.ndarray]:
    """All of ``perm`` as ``first`` / calibration_a / calibration_b, 10 : 15 : 15 by default."""
    n, total = len(perm), _held_out_fraction(cfg)
    sizes = {first: int(round(n * cfg.val_fraction / total)),
             "calibration_a": int(round(n * cfg.calib_fraction / total))}
    return _take(perm, sizes, rest="calibration_b")
