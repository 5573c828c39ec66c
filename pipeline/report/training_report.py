"""``report.html`` inside each model version: how training went, in pictures.

One self-contained file (images inlined), so that it is covered by the version's
checksums like every other file of the bundle.
"""
from __future__ import annotations

import base64
import html
import io
import math

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from vigil.schemas.tables import SCORE_NAMES


def _subplots(*grid, figsize, **kwargs):
    """A figure and its axes, without pyplot: no backend is chosen for the caller's process."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(*grid, **kwargs)


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _losses(history: dict) -> str:
    fig, axes = _subplots(1, 2, figsize=(10, 3))
    for ax, model in zip(axes, ("vae", "dae")):
        # An ensemble's further members are "vae_1", "dae_1", ...: drawn fainter, unlabelled.
        for name in (n for n in history if n == model or n.startswith(model + "_")):
            for key in ("loss", "val_loss"):
                if key in history[name]:
                    values = history[name][key]
                    ax.plot(range(1, len(values) + 1), values, label=key if name == model else None,
                            alpha=1.0 if name == model else 0.35,
                            color="C0" if key == "loss" else "C1")
        ax.set_title(f"{model} loss per epoch" + (" (all members)" if f"{model}_1" in history else ""),
                     fontsize=12)
        ax.set_xlabel("epoch", fontsize=10)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=10)
    return _png(fig)


def _hist(ax, values, color: str) -> None:
    """A histogram of the finite values; a model that diverged still gets its report."""
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    if len(finite):
        ax.hist(finite, bins=40, color=color)
    if len(finite) < len(values):
        ax.text(0.5, 0.9, f"{len(values) - len(finite)} non-finite", transform=ax.transAxes,
                ha="center", color="#c44e52", fontsize=10)


def _calibration(calibration) -> str:
    alpha = calibration.target_fprs[0]
    fig, axes = _subplots(1, len(SCORE_NAMES) + 1, figsize=(16, 3))
    thresholds = calibration.score_thresholds(alpha)
    for ax, name in zip(axes, SCORE_NAMES):
        sign = -1 if name.startswith("vae") else 1
        _hist(ax, sign * calibration.scores[name], "#4c72b0")
        if math.isfinite(thresholds[name]):
            ax.axvline(thresholds[name], color="#c44e52", linestyle="--")
        ax.set_title(f"{name} (split A)", fontsize=10)
    _hist(axes[-1], calibration.combined, "#55a868")
    t = calibration.threshold(alpha)
    if math.isfinite(t):
        axes[-1].axvline(t, color="#c44e52", linestyle="--")
    axes[-1].set_title(f"anomaly_score (calibration)\nthreshold at FPR {alpha:g}", fontsize=10)
    return _png(fig)


def _grid(images: np.ndarray, title: str) -> str:
    n = len(images)
    cols = min(n, 8)
    rows = math.ceil(n / cols)
    fig, axes = _subplots(rows, cols, figsize=(cols * 1.2, rows * 1.3), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, img in zip(axes.ravel(), images):
        ax.imshow(img[..., 0] if img.shape[-1] == 1 else np.clip(img, 0, 1),
                  cmap="gray" if img.shape[-1] == 1 else None, vmin=0, vmax=1)
    fig.suptitle(title, fontsize=12)
    return _png(fig)


def _latent(z_normal: np.ndarray, z_other: np.ndarray | None) -> str:
    both = z_normal if z_other is None or not len(z_other) else np.concatenate([z_normal, z_other])
    center = both.mean(axis=0)
    _, _, vt = np.linalg.svd(both - center, full_matrices=False)
    axes = np.zeros((2, both.shape[1]))       # a single row (or a 1-D latent) has fewer axes
    axes[:min(2, len(vt))] = vt[:2]
    proj = lambda z: (z - center) @ axes.T  # noqa: E731
    fig, ax = _subplots(figsize=(5, 4))
    p = proj(z_normal)
    ax.scatter(p[:, 0], p[:, 1], s=5, alpha=0.5, label="normal (validation)")
    if z_other is not None and len(z_other):
        q = proj(z_other)
        ax.scatter(q[:, 0], q[:, 1], s=5, alpha=0.6, color="#c44e52", label="labelled anomalous")
    ax.set_title("latent means (first two principal axes)", fontsize=12)
    ax.legend(fontsize=10)
    return _png(fig)


def render(name: str, result, x_val: np.ndarray, x_other: np.ndarray | None) -> str:
    """HTML of a training report; inputs are preprocessed arrays."""
    figures = [("Loss curves", _losses(result.history)),
               ("Calibration (held-out normal data)", _calibration(result.calibration))]
    z_val = result.encoder(x_val[:1000], training=False)[0].numpy()
    z_other = result.encoder(x_other[:500], training=False)[0].numpy() \
        if x_other is not None and len(x_other) else None
    if x_val.ndim == 4:
        rng = np.random.default_rng(0)
        z = rng.normal(size=(16, result.encoder.output_shape[0][-1])).astype(np.float32)
        out = result.decoder(z, training=False)
        samples = (1 / (1 + np.exp(-out.numpy())) if not isinstance(out, (list, tuple))
                   else out[0].numpy()).reshape((16, *x_val.shape[1:]))
        figures.append(("VAE samples from the prior", _grid(samples, "z ~ N(0, I)")))
        z_rec = result.encoder(x_val[:8], training=False)[0]
        rec = result.decoder(z_rec, training=False)
        rec = (1 / (1 + np.exp(-rec.numpy())) if not isinstance(rec, (list, tuple))
               else rec[0].numpy()).reshape((-1, *x_val.shape[1:]))
        figures.append(("Validation images and reconstructions",
                        _grid(np.concatenate([x_val[:8], rec]), "top: input · bottom: reconstruction")))
    figures.append(("Latent space", _latent(z_val, z_other)))
    m = result.metrics
    body = "".join(f"<h2>{html.escape(t)}</h2><img src='{src}' alt='{html.escape(t)}'>" for t, src in figures)
    esc = html.escape
    sizes = " · ".join(f"{esc(k.replace('_', ' '))} {v}" for k, v in result.split_sizes.items())
    fprs = ", ".join(f"{float(a):g}: {f:.3%}" for a, f in m["validation"].get("fpr", {}).items())
    warnings = "".join(f"<p class='warn'>Cannot flag: {esc(why)}.</p>" for why in
                       (result.calibration.cannot_flag(a) for a in result.calibration.target_fprs) if why)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>vigil model {esc(name)}</title>"
            "<style>body{font-family:sans-serif;margin:2em;max-width:1280px}img{max-width:100%}"
            "dl{display:grid;grid-template-columns:max-content auto;gap:4px 16px}dt{font-weight:bold}"
            ".warn{background:#fff3cd;border:1px solid #e0c36a;padding:8px}</style></head><body>"
            f"<h1>vigil model {esc(name)}</h1>{warnings}<dl>"
            f"<dt>splits</dt><dd>{sizes}</dd>"
            f"<dt>held-out FPR</dt><dd>{esc(fprs) or 'none'} (target: at most the rate)</dd>"
            f"<dt>device</dt><dd>{esc(result.plan.strategy)} ({esc(result.plan.precision)})</dd>"
            f"<dt>training time</dt><dd>{m['train_seconds']} s</dd></dl>{body}</body></html>")
