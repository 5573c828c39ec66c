"""Can a table's own normals tell which model will rank its anomalies better?

A label-free way to pool the scores would weight each model by how well it separates
held-out normal rows from a perturbed copy of them (each row with a share of its features
swapped for other rows' values: the marginals stay, the dependencies break).  This checks
that premise: per case it fits a ``vigil.models.Detector`` on 80 % of the train split,
measures each score's AUROC between the other 20 % and their perturbed copy, and its
AUROC on the real test split; then it counts the cases where the model (VAE: its best of
three scores; DAE) that wins on the perturbed copy also wins on the real anomalies.

    python tests/benchmarks/score_selection.py [--swap 0.3] [--case adbench-unsup/6_cardio/0 ...]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bundled  # noqa: E402
import numpy as np  # noqa: E402
from common import pin_threads, protocols, table, write_json  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

from vigil.models import Detector  # noqa: E402
from vigil.schemas.tables import SCORE_NAMES, SCORE_ORIENTATION  # noqa: E402

CASES = ("adbench-unsup/6_cardio/0", "adbench-unsup/23_mammography/0", "adbench-unsup/24_mnist/0",
         "adbench-unsup/24_mnist/1", "adbench-unsup/28_pendigits/0", "sklearn-unsup/breast_cancer/0",
         "sklearn-unsup/digits_1/0", "sklearn-unsup/digits_5/0")


def swap_features(x: np.ndarray, share: float, rng: np.random.Generator) -> np.ndarray:
    """Each row with round(share * d) of its features taken from random other rows."""
    n, d = x.shape
    k = max(1, round(share * d))
    out = x.copy()
    for i in range(n):
        cols = rng.choice(d, k, replace=False)
        out[i, cols] = x[rng.integers(n, size=k), cols]
    return out


def model_aurocs(scores: dict, y: np.ndarray) -> dict[str, float]:
    """AUROC of each score, and per model its best ('vae', 'dae')."""
    out = {n: float(roc_auc_score(y, SCORE_ORIENTATION[n] * scores[n])) for n in SCORE_NAMES}
    return {**out, "vae": max(out[n] for n in SCORE_NAMES[:3]), "dae": out[SCORE_NAMES[3]]}


def run_case(P, spec: str, share: float) -> dict:
    protocol, dataset, seed = spec.split("/")
    x_train, x_test, y_test = (bundled.load(P, dataset, int(seed)) if protocol == bundled.PROTOCOL
                               else P.load(protocol, dataset=dataset, seed=int(seed)))
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x_train))
    held, fit = order[: len(order) // 5], order[len(order) // 5:]
    detector = Detector("features").fit(x_train[fit].astype(np.float32))
    normal = x_train[held].astype(np.float32)
    both = np.concatenate([normal, swap_features(normal, share, rng)])
    y_swap = np.r_[np.zeros(len(normal)), np.ones(len(normal))]
    return {"case": spec, "swapped": model_aurocs(detector.score(both), y_swap),
            "real": model_aurocs(detector.score(x_test.astype(np.float32)), y_test)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", action="append", help="protocol/dataset/seed (default: eight cases)")
    ap.add_argument("--swap", type=float, default=0.3, help="share of each row's features swapped")
    args = ap.parse_args(argv)
    pin_threads(1)
    P = protocols()
    results = [run_case(P, spec, args.swap) for spec in args.case or CASES]
    rows, agree = [], 0
    for r in results:
        pick = max(("vae", "dae"), key=r["swapped"].get)
        win = max(("vae", "dae"), key=r["real"].get)
        agree += pick == win
        rows.append([r["case"], f"{r['swapped']['vae']:.3f}", f"{r['swapped']['dae']:.3f}", pick,
                     f"{r['real']['vae']:.3f}", f"{r['real']['dae']:.3f}", win])
    print(table(rows, ["case", "swapped: VAE", "DAE", "picks", "real: VAE", "DAE", "wins"]))
    print(f"the perturbed copy picks the winning model in {agree} of {len(results)} cases")
    write_json("score-selection.json", {"swap": args.swap, "agree": agree, "cases": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
