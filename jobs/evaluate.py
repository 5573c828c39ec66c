"""``vigil evaluate``: how good was a run, against labels it carried through?"""
from __future__ import annotations

import json

import numpy as np
import tensorflow as tf
from sklearn.metrics import average_precision_score, precision_recall_fscore_support, roc_auc_score

from vigil.models.config import DataError
from vigil.pipeline.commit import load_run
from vigil.schemas.tables import SCORE_NAMES, SCORE_ORIENTATION


def evaluate(run_dir: str, label_column: str, normal_values: tuple[str, ...] = ()) -> dict:
    """AUROC, AUPRC and precision/recall/F1 at the run's thresholds, per score and combined.

    A row is an anomaly when its label is not in ``normal_values``; without them, when
    the label is truthy (1, true, "1").
    """
    table, manifest = load_run(run_dir)
    if table is None or table.num_rows == 0:
        raise DataError(f"{run_dir}: the run has no scored rows to evaluate")
    if label_column not in table.schema.names:
        raise DataError(f"{run_dir}: no column '{label_column}' in the scores"
                        + _column_hint(label_column, table))
    labels = table.column(label_column).to_pylist()
    keep = np.array([v is not None for v in labels])
    if not keep.any():
        raise DataError(f"{run_dir}: column '{label_column}' holds no labels (every row is null)")
    if normal_values:
        y = np.array([str(v) not in normal_values for v in labels], dtype=int)
    else:
        y = np.array([str(v).lower() in ("1", "true") for v in labels], dtype=int)
    y = y[keep]
    if len(set(y)) < 2:
        raise DataError(f"{run_dir}: {_one_class(y[0], labels, normal_values)}; AUROC needs both")
    thresholds = manifest["thresholds"]
    out = {"run": run_dir, "rows": int(keep.sum()), "anomalies": int(y.sum()),
           "target_fpr": thresholds.get("target_fpr"),
           "could_flag": thresholds.get("anomaly_score") is not None, "scores": {}}
    for col in (*SCORE_NAMES, "anomaly_score"):
        sign = SCORE_ORIENTATION.get(col, 1)
        s = sign * table.column(col).to_numpy()[keep]
        t = thresholds.get(col)
        flags = table.column("is_anomaly").to_numpy()[keep] if col == "anomaly_score" else \
            (s > sign * t if t is not None else np.zeros(len(s), bool))
        p, r, f1, _ = precision_recall_fscore_support(y, flags, average="binary", zero_division=0)
        out["scores"][col] = {"auroc": float(roc_auc_score(y, s)),
                              "auprc": float(average_precision_score(y, s)),
                              "precision": float(p), "recall": float(r), "f1": float(f1),
                              "fpr": float(flags[y == 0].mean())}
    return out


def save(result: dict) -> str:
    """Write an evaluation to ``<run>/evaluation.json``; return its path."""
    path = f"{result['run'].rstrip('/')}/evaluation.json"
    with tf.io.gfile.GFile(path, "w") as f:
        json.dump(result, f, indent=1, allow_nan=False)
    return path


def _column_hint(missing: str, table) -> str:
    """The closest column, and the columns the run carried (where labels would be)."""
    import difflib

    from vigil.schemas.tables import scores_schema
    carried = [n for n in table.schema.names if n not in scores_schema().names]
    close = difflib.get_close_matches(missing, table.schema.names, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return hint + (f" (carried columns: {', '.join(carried)})" if carried else
                   " (the run carried no columns: score with --carry-column)")


def _one_class(cls: int, labels: list, normal_values: tuple[str, ...]) -> str:
    """Why every labelled row fell in one class, with the label values seen."""
    from collections import Counter
    seen = Counter(str(v) for v in labels if v is not None).most_common(5)
    values = ", ".join(f"{v} ({n})" for v, n in seen)
    rule = f"--normal-values {','.join(normal_values)}" if normal_values else \
        "no --normal-values (anomalous: 1 or true)"
    return f"every labelled row is {'an anomaly' if cls else 'normal'} under {rule}; labels seen: {values}"


def format_table(result: dict) -> str:
    """An evaluation as a text table: per score AUROC, AUPRC, precision, recall, F1, FPR."""
    lines = [f"{'score':<20} {'AUROC':>6} {'AUPRC':>6} {'prec':>6} {'recall':>6} {'F1':>6} {'FPR':>6}"]
    for col, m in result["scores"].items():
        lines.append(f"{col:<20} {m['auroc']:6.3f} {m['auprc']:6.3f} {m['precision']:6.3f} "
                     f"{m['recall']:6.3f} {m['f1']:6.3f} {m['fpr']:6.3f}")
    lines.append(f"{result['rows']} labelled rows, {result['anomalies']} anomalies; "
                 f"thresholds at target FPR {result['target_fpr']}")
    if not result["could_flag"]:
        lines.append(f"this run could flag nothing: the model's calibration has too few normal "
                     f"values for a threshold at target FPR {result['target_fpr']} (precision and "
                     "recall are 0 for that reason; see 'vigil train' advice or score at a "
                     "larger --target-fpr)")
    return "\n".join(lines)
