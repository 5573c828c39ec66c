"""Matplotlib figures of a run: score histograms, anomaly-rate history, top anomalies.

Figures are drawn with matplotlib's object API (``Figure``), never through pyplot, so
building a report selects no backend and changes no setting of the calling process.
"""
from __future__ import annotations

import math

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator

from vigil.schemas.tables import SCORE_NAMES, SCORE_ORIENTATION

FONT = 11          # readable at 100 % zoom in a 1280 px window
DPI = 100


def _save(fig: Figure, path: str) -> None:
    fig.savefig(path, dpi=DPI)


def _robust_range(values: np.ndarray, threshold: float | None) -> tuple[float, float]:
    """The bulk of the values (0.5-99.5 %), widened to show the threshold: one outlier must
    not squash everything else into a single bin."""
    lo, hi = np.percentile(values, [0.5, 99.5])
    if threshold is not None and math.isfinite(threshold):
        lo, hi = min(lo, threshold), max(hi, threshold)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    pad = 0.03 * (hi - lo)
    return lo - pad, hi + pad


def score_histograms(sample: dict[str, np.ndarray], thresholds: dict, path: str) -> None:
    """One histogram per score, log counts, with its threshold at the run's target FPR."""
    names = [*SCORE_NAMES, "anomaly_score"]
    fig = Figure(figsize=(12.8, 7.2), layout="constrained")
    axes = fig.subplots(2, 3).ravel()
    for ax, name in zip(axes, names):
        values = np.asarray(sample.get(name, []), dtype=float)
        values = values[np.isfinite(values)]
        t = thresholds.get(name)
        t = t if t is not None and math.isfinite(t) else None
        title = name
        if len(values):
            lo, hi = _robust_range(values, t)
            outside = int(((values < lo) | (values > hi)).sum())
            ax.hist(np.clip(values, lo, hi), bins=60, range=(lo, hi), color="#4c72b0", log=True)
            ax.yaxis.set_minor_locator(NullLocator())
            ax.set_xlim(lo, hi)
            if outside:
                title += f"  ({outside} off the axis, at its edge)"
        if t is not None:
            ax.axvline(t, color="#c44e52", linestyle="--", linewidth=2, label=f"threshold {t:.4g}")
            ax.legend(fontsize=FONT - 1, loc="upper center")
        side = "anomalous: low ←" if SCORE_ORIENTATION.get(name, 1) < 0 else "anomalous: high →"
        ax.set_title(title, fontsize=FONT)
        ax.set_xlabel(side, fontsize=FONT - 1)
        ax.set_ylabel("records (log)", fontsize=FONT - 1)
        ax.tick_params(labelsize=FONT - 1)
    axes[-1].axis("off")
    n = len(np.asarray(sample.get("anomaly_score", [])))
    fig.suptitle(f"Scores of {n} sampled records; dashed: the threshold at the run's target FPR",
                 fontsize=FONT + 1)
    _save(fig, path)


def rate_history(runs: list[tuple[str, float]], current: str, target: float, what: str,
                 path: str) -> None:
    """Anomaly rate of the published runs of one model at one target FPR (``what`` says so)."""
    fig = Figure(figsize=(12.8, 3.6), layout="constrained")
    ax = fig.subplots()
    if runs:
        xs = np.arange(len(runs))
        ax.plot(xs, [r for _, r in runs], marker="o", color="#4c72b0", label="anomaly rate")
        for i, (run_id, rate) in enumerate(runs):
            if run_id == current:
                ax.plot([i], [rate], marker="o", markersize=11, color="#c44e52", label="this run")
        step = max(1, len(runs) // 20)
        ax.set_xticks(xs[::step], [r for r, _ in runs][::step], rotation=30, ha="right")
    ax.axhline(target, color="grey", linestyle=":", linewidth=2, label=f"target FPR {target:g}")
    ax.set_ylabel("anomaly rate", fontsize=FONT)
    ax.set_title(f"Anomaly rate across runs of {what}", fontsize=FONT + 1)
    ax.tick_params(labelsize=FONT - 1)
    ax.legend(fontsize=FONT - 1)
    _save(fig, path)


def image_anomalies(items: list[tuple[str, float, np.ndarray, np.ndarray]], path: str) -> None:
    """Rows of (input, VAE reconstruction, squared-error heat map) for the top anomalies."""
    n = max(len(items), 1)
    fig = Figure(figsize=(7.5, 2.4 * n), layout="constrained")
    axes = fig.subplots(n, 3, squeeze=False)
    for row, (rid, score, x, recon) in zip(axes, items):
        cmap = "gray" if x.shape[-1] == 1 else None
        show = lambda a: a[..., 0] if a.shape[-1] == 1 else np.clip(a, 0, 1)  # noqa: E731
        row[0].imshow(show(x), cmap=cmap, vmin=0, vmax=1)
        row[0].set_title(f"{rid[:28]}\nanomaly_score {score:.3g}", fontsize=FONT - 2)
        row[1].imshow(show(recon), cmap=cmap, vmin=0, vmax=1)
        row[1].set_title("reconstruction", fontsize=FONT - 2)
        row[2].imshow(np.square(x - recon).sum(axis=-1), cmap="inferno")
        row[2].set_title("squared error", fontsize=FONT - 2)
        for ax in row:
            ax.axis("off")
    _save(fig, path)


def feature_anomalies(items: list[tuple[str, float, list[tuple[str, float]]]], path: str) -> None:
    """For each top anomaly, its top contributing features (VAE negative log-likelihood)."""
    n = max(len(items), 1)
    fig = Figure(figsize=(9, 2.0 * n), layout="constrained")
    axes = fig.subplots(n, 1, squeeze=False)
    for (ax,), (rid, score, feats) in zip(axes, items):
        names = [f for f, _ in feats][::-1]
        ax.barh(names, [c for _, c in feats][::-1], color="#dd8452")
        ax.set_title(f"{rid[:48]}  (anomaly_score {score:.3g})", fontsize=FONT - 1)
        ax.tick_params(labelsize=FONT - 2)
    _save(fig, path)
