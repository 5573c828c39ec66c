"""The data-quality suites of a scoring run, as plain data.

Each expectation is ``{"expectation": <GX class name>, "kwargs": {...}, "critical": bool,
"why": str}``; ``vigil.pipeline.report.quality`` turns them into great-expectations objects.
Four frames are validated:

* ``scores``  a bounded sample of the scores table;
* ``summary`` one row of exact run counts (from the manifest and a full id scan);
* ``files``   one row per input file;
* ``inputs``  a bounded sample of the input records, checked against the training profile:
              images one row per record, tables one row per feature (its shares of missing
              and out-of-range values in the sample).
"""
from __future__ import annotations

from vigil.schemas.tables import SCORE_NAMES

NON_FINITE_TOLERANCE = 0.01     # share of non-finite values a feature may have
RANGE_SLACK = 0.5               # ranges widen by this share of the training range
RANGE_MOSTLY = 0.99


def _e(expectation: str, critical: bool, why: str, **kwargs) -> dict:
    return {"expectation": expectation, "kwargs": kwargs, "critical": critical, "why": why}


def scores_suite() -> list[dict]:
    """The checks on the scores table: every score and p-value present and finite, p-values in [0, 1]."""
    out = []
    for name in (*SCORE_NAMES, "anomaly_score"):
        out.append(_e("ExpectColumnValuesToNotBeNull", True, "scores are finite", column=name))
        out.append(_e("ExpectColumnValuesToBeBetween", True, "scores are finite", column=name,
                      min_value=-1.7e308, max_value=1.7e308))
    for name in (*(f"{n}_pvalue" for n in SCORE_NAMES), "anomaly_pvalue"):
        out.append(_e("ExpectColumnValuesToBeBetween", True, "p-values lie in [0, 1]",
                      column=name, min_value=0.0, max_value=1.0))
    out.append(_e("ExpectColumnUniqueValueCountToBeBetween", True,
                  "one model version scored the whole run", column="model_version",
                  min_value=1, max_value=1))
    return out


def summary_suite(target_fpr: float, max_anomaly_multiple: float, max_bad_fraction: float) -> list[dict]:
    """The checks on a run's summary: records scored, unique ids, the anomaly rate near the
    target, the bad fraction."""
    return [
        _e("ExpectColumnValuesToBeBetween", True,
           "records were scored (an empty input usually means the export upstream failed)",
           column="scored", min_value=1),
        _e("ExpectColumnValuesToBeBetween", False, "ids are unique (duplicates are scored twice)",
           column="duplicate_ids", min_value=0, max_value=0),
        _e("ExpectColumnValuesToBeBetween", True,
           f"anomaly rate at most {max_anomaly_multiple:g} x the target FPR; a jump means "
           "drift or a broken input", column="anomaly_rate", min_value=0.0,
           max_value=max_anomaly_multiple * target_fpr),
        _e("ExpectColumnValuesToBeBetween", True, "dead-letter fraction under its limit",
           column="bad_fraction", min_value=0.0, max_value=max_bad_fraction),
    ]


def files_suite() -> list[dict]:
    """The check on the per-file stats: every input file was read to the end."""
    return [_e("ExpectColumnValuesToBeInSet", True, "every input file was read to the end",
               column="fully_read", value_set=[True])]


def inputs_suite(profile: dict, input_shape: list[int],
                 source_shapes: list[str] | str | None = None) -> list[dict]:
    """Derived from the training profile in the model bundle.

    Images: one row per sampled record (its stored shape), checked against the stored
    shapes of the training images (``source_shapes``, recorded by ``vigil train``; the
    model's input shape for models without them); none when training saw images of many
    sizes ("varied").  Tables: one row per model feature (see ``feature_bounds``), so that
    a table of 2,000 features is two checks over 2,000 rows, not 6,000 checks of one
    column each, and a failure names its features.
    """
    if profile.get("kind") == "image":
        if source_shapes == "varied":
            return []
        shapes = list(source_shapes or ["x".join(map(str, input_shape))])
        return [_e("ExpectColumnValuesToBeInSet", False,
                   "images have the shapes the training images had (others are resized or converted)",
                   column="shape", value_set=shapes, mostly=0.95)]
    return [_e("ExpectColumnValuesToBeBetween", True,
               f"at most {NON_FINITE_TOLERANCE:.0%} missing or non-finite values per feature",
               column="missing_share", min_value=0.0, max_value=NON_FINITE_TOLERANCE),
            _e("ExpectColumnValuesToBeBetween", False,
               f"at least {RANGE_MOSTLY:.0%} of each feature's values stay near its training range",
               column="outside_range_share", min_value=0.0, max_value=1 - RANGE_MOSTLY)]


def feature_bounds(profile: dict) -> dict[str, tuple[float, float]]:
    """Each feature's accepted range: its training range widened by ``RANGE_SLACK`` of its span."""
    out = {}
    for name, stats in profile.get("columns", {}).items():
        span = max(stats["max"] - stats["min"], 1e-9)
        out[name] = (stats["min"] - RANGE_SLACK * span, stats["max"] + RANGE_SLACK * span)
    return out
