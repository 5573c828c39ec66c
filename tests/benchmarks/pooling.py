"""How else could ``anomaly_score`` pool the four scores?  Offline, on ``accuracy.py --dump``.

Each dumped case holds its test split's raw scores, labels and calibration split A; this
recomputes ``anomaly_score`` under other pooling rules from the same surprises (−log p~
against split A, ``vigil.models.calibration.smooth_surprise``) and prints, per protocol,
the mean AUROC, the worst gap to the case's best single score and the cases more than
0.03 below it.  No model is trained, so it takes seconds.  Rules:

- ``mean`` (vigil's for tables): the mean of the four surprises, Fisher's combination;
- ``max_model``: the larger of the VAE's mean surprise and the DAE's (vigil's rule name);
- ``model_equal``: the VAE's mean surprise and the DAE's, half each;
- ``stouffer``: the mean of the normal quantiles z = Φ⁻¹(1 − p~), which grow like
  sqrt(2 × surprise), so no one extreme score decides;
- ``mean_p``: −(mean of p~), an "every score agrees" rule;
- ``best_single`` (an oracle: it reads the labels): the case's best single score.

Image cases are skipped: their pooled statistics are complexity-adjusted, and the dump
holds neither the adjusted scores nor the images' sizes.

    python tests/benchmarks/pooling.py DUMP_DIR [DUMP_DIR ...]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402
from common import table, write_json  # noqa: E402
from scipy.special import ndtri_exp  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

from vigil.models.calibration import Calibration, smooth_surprise  # noqa: E402
from vigil.schemas.tables import SCORE_NAMES, SCORE_ORIENTATION  # noqa: E402

VAE, DAE = SCORE_NAMES[:3], SCORE_NAMES[3]


def _z(surprise: np.ndarray) -> np.ndarray:
    """Φ⁻¹(1 − p) from −log p, exact in the far tail (p = 1 maps to a finite floor)."""
    return -ndtri_exp(-np.maximum(surprise, 1e-6))


RULES = {
    "model_equal": lambda s: 0.5 * np.mean([s[n] for n in VAE], axis=0) + 0.5 * s[DAE],
    "stouffer": lambda s: np.mean([_z(s[n]) for n in SCORE_NAMES], axis=0),
    "mean_p": lambda s: -np.mean([np.exp(-s[n]) for n in SCORE_NAMES], axis=0),
}


def case_aurocs(dump: dict) -> tuple[dict[str, float], dict[str, float]]:
    """(AUROC of each single score, AUROC of each pooling rule) on one dumped case."""
    y, split_a = dump["y"], {n: dump[f"cal_{n}"] for n in SCORE_NAMES}
    raw = {n: dump[f"test_{n}"] for n in SCORE_NAMES}
    single = {n: roc_auc_score(y, SCORE_ORIENTATION[n] * raw[n]) for n in SCORE_NAMES}
    pooled = {rule: roc_auc_score(y, Calibration(split_a, np.array([]), rule=rule).anomaly_score(raw))
              for rule in ("mean", "max_model")}
    surprise = {n: smooth_surprise(split_a[n], SCORE_ORIENTATION[n] * raw[n]) for n in SCORE_NAMES}
    pooled |= {rule: roc_auc_score(y, pool(surprise)) for rule, pool in RULES.items()}
    pooled["best_single"] = max(single.values())
    return single, pooled


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dumps", nargs="+", help="folders written by accuracy.py --dump")
    args = ap.parse_args(argv)
    by_protocol: dict[str, dict[str, dict]] = {}
    for path in sorted(p for d in args.dumps for p in Path(d).glob("*.npz")):
        protocol = next((p for p in ("adbench-unsup", "mvtec-resnet18", "sklearn-unsup")
                         if path.stem.startswith(p)), None)
        if protocol:
            single, pooled = case_aurocs(dict(np.load(path)))
            by_protocol.setdefault(protocol, {})[path.stem] = {"single": single, "pooled": pooled}
    if not by_protocol:
        raise SystemExit(f"no table cases in {', '.join(args.dumps)} (accuracy.py --dump DIR)")
    summary, rows = {}, []
    for protocol, cases in by_protocol.items():
        best = np.array([c["pooled"]["best_single"] for c in cases.values()])
        summary[protocol] = {"cases": len(cases), "rules": {}}
        for rule in cases[next(iter(cases))]["pooled"]:
            auroc = np.array([c["pooled"][rule] for c in cases.values()])
            gap = best - auroc
            summary[protocol]["rules"][rule] = {
                "mean_auroc": round(float(auroc.mean()), 4), "worst_gap": round(float(gap.max()), 4),
                "cases_gap_over_0.03": int((gap > 0.03).sum())}
            rows.append([protocol, rule, f"{auroc.mean():.4f}", f"{gap.max():+.3f}",
                         f"{(gap > 0.03).sum()} of {len(cases)}"])
        summary[protocol]["per_case"] = cases
    print(table(rows, ["protocol", "rule", "mean AUROC", "worst gap to best single",
                       "cases > 0.03 below"]))
    print(f"written to {write_json('pooling.json', summary)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
