"""How far the realised false-positive rate of ``is_anomaly`` strays from its target.

The threshold on ``anomaly_score`` is an order statistic of a finite calibration set, so
the false-positive rate it gives on new normal data is a random variable around the
target.  This benchmark draws synthetic normal scores (four correlated, right-skewed
statistics, as the VAE's three and the DAE's are), fits ``models.calibration.Calibration``
on two splits of n rows, and measures the exact FPR of the threshold on a large fresh
sample, many times over.  It compares the combined threshold from split B alone with the
shipped one (split B plus split A's leave-one-out values), and reports each one's mean,
std and the share of repeats inside [0.5, 1.5] x target, the band the accuracy
benchmark checks.

    python tests/benchmarks/calibration.py [--repeats 200] [--rows 810 100]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import table, write_json  # noqa: E402

import numpy as np  # noqa: E402

from models.calibration import Calibration  # noqa: E402
from schemas.tables import SCORE_NAMES, SCORE_ORIENTATION  # noqa: E402

TARGET = 0.01
FRESH = 100_000
CORRELATION = 0.8


def draw(rng: np.random.Generator, rows: int) -> dict[str, np.ndarray]:
    """Raw scores of normal records: correlated log-normal surprises, in each score's units."""
    cov = np.full((4, 4), CORRELATION) + (1 - CORRELATION) * np.eye(4)
    z = rng.standard_normal((rows, 4)) @ np.linalg.cholesky(cov).T
    return {n: SCORE_ORIENTATION[n] * np.exp(0.7 * z[:, j]) for j, n in enumerate(SCORE_NAMES)}


def realised_fprs(rng: np.random.Generator, rows: int) -> dict[str, float]:
    a, b, fresh = draw(rng, rows), draw(rng, rows), draw(rng, FRESH)
    pooled = Calibration.fit(a, b, (TARGET,))
    b_only = Calibration(pooled.scores, np.sort(pooled.anomaly_score(b)), (TARGET,))
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
    for n in args.rows:
        runs = [realised_fprs(rng, n) for _ in range(args.repeats)]
        for method in runs[0]:
            fpr = np.array([r[method] for r in runs])
            stats = {"mean": round(float(fpr.mean()), 5), "std": round(float(fpr.std()), 5),
                     "in_band": round(float(np.mean((fpr >= TARGET / 2) & (fpr <= 1.5 * TARGET))), 3)}
            results.setdefault(str(n), {})[method] = stats
            rows.append([n, method, stats["mean"], stats["std"], stats["in_band"]])
    path = write_json("calibration.json", {"target_fpr": TARGET, "repeats": args.repeats,
                                          "fresh_rows": FRESH, "seconds": round(time.time() - started, 1),
                                          "rows_per_split": results})
    print(table(rows, ["rows per split", "combined threshold from", "mean FPR", "std", "in band"]))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
