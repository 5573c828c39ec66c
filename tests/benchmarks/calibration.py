"""How far the realised false-positive rate of ``is_anomaly`` strays from its target.

The threshold on ``anomaly_score`` is an order statistic of a finite calibration set, so
the false-positive rate it gives on new normal data is a random variable around the
target.  This benchmark draws synthetic normal scores, fits ``vigil.models.calibration.Calibration``
on two splits of n rows, and measures the FPR of the threshold on a large fresh sample,
many times over, in two settings:

* ``tables``: four correlated, right-skewed statistics (as the VAE's three and the DAE's
  are), pooled by the ``mean`` rule;
* ``images``: a DAE error that grows with the image's compressed size and whose noise
  grows with it too, over skewed sizes, judged complexity-adjusted under the ``dae`` rule
  (the jackknife keeps split A's slope, so high-leverage rows are where it could slip).

It compares the combined threshold from split B alone with the shipped one (split B plus
split A's leave-one-out values), and reports each one's mean, std and the share of
repeats inside [0.5, 1.5] x target, the band the accuracy benchmark checks.

    python tests/benchmarks/calibration.py [--repeats 200] [--rows 810 100]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402
from common import table, write_json  # noqa: E402

from vigil.models.calibration import Calibration  # noqa: E402
from vigil.models.complexity import INPUT_BITS  # noqa: E402
from vigil.schemas.tables import SCORE_NAMES, SCORE_ORIENTATION  # noqa: E402

TARGET = 0.01
FRESH = 100_000
CORRELATION = 0.8


def draw(rng: np.random.Generator, rows: int) -> dict[str, np.ndarray]:
    """Raw scores of normal records: correlated log-normal surprises, in each score's units."""
    cov = np.full((4, 4), CORRELATION) + (1 - CORRELATION) * np.eye(4)
    z = rng.standard_normal((rows, 4)) @ np.linalg.cholesky(cov).T
    return {n: SCORE_ORIENTATION[n] * np.exp(0.7 * z[:, j]) for j, n in enumerate(SCORE_NAMES)}


def draw_images(rng: np.random.Generator, rows: int) -> dict[str, np.ndarray]:
    """Raw scores whose level and spread grow with a skewed input_bits."""
    bits = rng.gamma(4.0, 50.0, size=rows)
    error = 0.02 * bits + rng.standard_normal(rows) * (1 + bits / 200)
    out = {n: SCORE_ORIENTATION[n] * (error + 0.3 * rng.standard_normal(rows)) for n in SCORE_NAMES}
    return {**out, INPUT_BITS: bits}


SETTINGS = {"tables": (draw, {}),
            "images": (draw_images, {"combine": ("dae_recon_error",), "rule": "dae",
                                     "adjust_complexity": True})}


def realised_fprs(rng: np.random.Generator, rows: int, setting: str) -> dict[str, float]:
    sample, options = SETTINGS[setting]
    a, b, fresh = sample(rng, rows), sample(rng, rows), sample(rng, FRESH)
    pooled = Calibration.fit(a, b, (TARGET,), **options)
    b_only = Calibration(pooled.scores, np.sort(pooled.anomaly_score(b)), (TARGET,),
                         pooled.combine, pooled.rule, pooled.slopes)
    score = pooled.anomaly_score(fresh)
    return {"split B": float(np.mean(score > b_only.threshold(TARGET))),
            "B + jackknifed A": float(np.mean(score > pooled.threshold(TARGET)))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--rows", type=int, nargs="+", default=[810, 100],
                    help="rows in each calibration split (810: an mnist-anc case)")
    args = ap.parse_args(argv)
    started, rng = time.time(), np.random.default_rng(0)
    results, rows = {}, []
    for setting in SETTINGS:
        for n in args.rows:
            runs = [realised_fprs(rng, n, setting) for _ in range(args.repeats)]
            for method in runs[0]:
                fpr = np.array([r[method] for r in runs])
                stats = {"mean": round(float(fpr.mean()), 5), "std": round(float(fpr.std()), 5),
                         "in_band": round(float(np.mean((fpr >= TARGET / 2) & (fpr <= 1.5 * TARGET))), 3)}
                results.setdefault(setting, {}).setdefault(str(n), {})[method] = stats
                rows.append([setting, n, method, stats["mean"], stats["std"], stats["in_band"]])
    path = write_json("calibration.json", {"target_fpr": TARGET, "repeats": args.repeats,
                                          "fresh_rows": FRESH, "seconds": round(time.time() - started, 1),
                                          "settings": results})
    print(table(rows, ["setting", "rows per split", "combined threshold from", "mean FPR", "std", "in band"]))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
