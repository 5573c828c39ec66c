"""Matplotlib figures of a run: score histograms, anomaly-rate history, top anomalies."""
from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from vigil.schemas.tables import SCORE_NAMES  # noqa: E402


def score_histograms(sample: dict[str, np.ndarray], thresholds: dict, path: str) -> None:
    """One histogram per score with its threshold at the run's target FPR."""
    names = [*SCORE_NAMES, "anomaly_score"]
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.2))
    for ax, name in zip(axes, names):
        values = np.asarray(sample.get(name, []), dtype=float)
        values = values[np.isfinite(values)]
        if len(values):
            lo, hi = np.percentile(values, [0.5, 99.5])
            ax.hist(np.clip(values, lo, hi), bins=50, color="#4c72b0")
        t = thresholds.get(name)
        if t is not None and math.isfinite(t):
            ax.axvline(t, color="#c44e52", linestyle="--", label=f"threshold {t:.3g}")
            ax.legend(fontsize=7)
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
    fig.suptitle(f"scores (sample of {len(np.asarray(sample.get('anomaly_score', [])))} rows)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def rate_history(runs: list[tuple[str, float]], current: str, target: float, path: str) -> None:
    """Anomaly rate of every published run under the same output root."""
    fig, ax = plt.subplots(figsize=(8, 3))
    if runs:
        xs = np.arange(len(runs))
        ax.plot(xs, [r for _, r in runs], marker="o", color="#4c72b0")
        for i, (run_id, rate) in enumerate(runs):
            if run_id == current:
                ax.plot([i], [rate], marker="o", markersize=10, color="#c44e52")
        ax.set_xticks(xs, [r for r, _ in runs], rotation=30, fontsize=7, ha="right")
    ax.axhline(target, color="grey", linestyle=":", label=f"target FPR {target:g}")
    ax.set_ylabel("anomaly rate")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def image_anomalies(items: list[tuple[str, float, np.ndarray, np.ndarray]], path: str) -> None:
    """Rows of (input, VAE reconstruction, squared-error heat map) for the top anomalies."""
    n = max(len(items), 1)
    fig, axes = plt.subplots(n, 3, figsize=(6, 2 * n), squeeze=False)
    for row, (rid, score, x, recon) in zip(axes, items):
        cmap = "gray" if x.shape[-1] == 1 else None
        show = lambda a: a[..., 0] if a.shape[-1] == 1 else np.clip(a, 0, 1)  # noqa: E731
        row[0].imshow(show(x), cmap=cmap, vmin=0, vmax=1)
        row[0].set_title(f"{rid[:28]}\nscore {score:.3g}", fontsize=7)
        row[1].imshow(show(recon), cmap=cmap, vmin=0, vmax=1)
        row[1].set_title("reconstruction", fontsize=7)
        row[2].imshow(np.square(x - recon).sum(axis=-1), cmap="inferno")
        row[2].set_title("squared error", fontsize=7)
        for ax in row:
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def feature_anomalies(items: list[tuple[str, float, list[tuple[str, float]]]], path: str) -> None:
    """For each top anomaly, its top contributing features (VAE negative log-likelihood)."""
    n = max(len(items), 1)
    fig, axes = plt.subplots(n, 1, figsize=(7, 1.6 * n), squeeze=False)
    for (ax,), (rid, score, feats) in zip(axes, items):
        names = [f for f, _ in feats][::-1]
        ax.barh(names, [c for _, c in feats][::-1], color="#dd8452")
        ax.set_title(f"{rid[:40]}  (anomaly_score {score:.3g})", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
