"""Run great-expectations over a published run and build its Data Docs in the run folder.

GX Core 1.x in an ephemeral context with pandas assets; the suites come from
``vigil.schemas.expectations``.  GX never sees the whole run: ``vigil.pipeline.report.sample`` feeds
it bounded samples plus exact counts.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from vigil.schemas import expectations as suites
from vigil.schemas.manifest import strict_json


@dataclass
class CheckResult:
    """One great-expectations check: what it checks, on which frame and column, whether it passed and why it
    matters."""
    frame: str
    expectation: str
    column: str | None
    success: bool
    critical: bool
    why: str
    observed: str = ""


@dataclass
class QualityReport:
    """Every check of a run and where GX's validation pages were written."""
    checks: list[CheckResult] = field(default_factory=list)
    docs_index: str = ""

    @property
    def success(self) -> bool:
        """Whether every check passed."""
        return all(c.success for c in self.checks)

    @property
    def critical_failures(self) -> list[CheckResult]:
        """The failed checks that ``--fail-on-dq`` turns into exit code 4."""
        return [c for c in self.checks if c.critical and not c.success]


def _observed(result) -> str:
    r = result.result or {}
    examples = [v["value"] for v in r.get("partial_unexpected_counts") or []][:4]
    if examples and r.get("unexpected_percent") is not None:     # values that failed: show a few
        shown = ", ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in examples)
        return f"{r['unexpected_percent']:.3g}% unexpected, such as {shown}"
    for key in ("observed_value", "unexpected_percent", "unexpected_count"):
        if key in r and r[key] is not None:
            value = r[key]
            return f"{key.replace('_', ' ')}: {value:.4g}" if isinstance(value, float) else \
                f"{key.replace('_', ' ')}: {value}"
    return ""


NAMES_SHOWN = 8      # failing rows named in a check's "observed" (GX's summary keeps 20)


def validate(frames: dict[str, pd.DataFrame], specs: dict[str, list[dict]], docs_dir: str) -> QualityReport:
    """Validate each frame against its suite; Data Docs go to ``docs_dir``.

    Each suite is built whole before it is added: GX re-serialises a stored suite on every
    ``add_expectation``, which made adding them one by one quadratic in their number.
    """
    import logging

    import great_expectations as gx
    # GX sets INFO on some of its module loggers itself (the temporary Data Docs folder);
    # those inherit the caller's level again.
    for name in [n for n in logging.root.manager.loggerDict if n.startswith("great_expectations")]:
        logger = logging.getLogger(name)
        if logging.NOTSET < logger.level < logging.WARNING:
            logger.setLevel(logging.NOTSET)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = {"globally": False, "metric_calculations": False}
    context.add_data_docs_site("vigil", {
        "class_name": "SiteBuilder",
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": docs_dir}})
    source = context.data_sources.add_pandas("vigil")
    report = QualityReport()
    for frame, spec in specs.items():
        if frame not in frames or not spec or frames[frame].empty:    # no rows, nothing to check
            continue
        batch = source.add_dataframe_asset(frame).add_batch_definition_whole_dataframe(frame)
        suite = context.suites.add(gx.ExpectationSuite(name=f"vigil-{frame}", expectations=[
            getattr(gx.expectations, item["expectation"])(
                **item["kwargs"], meta={"critical": item["critical"], "why": item["why"]})
            for item in spec]))
        vd = context.validation_definitions.add(gx.ValidationDefinition(
            data=batch, suite=suite, name=f"vigil-{frame}"))
        checkpoint = context.checkpoints.add(gx.Checkpoint(
            name=f"vigil-{frame}", validation_definitions=[vd], result_format={"result_format": "SUMMARY"}))
        row_name = frames[frame].index.name     # rows named by their index: failures name them
        result = checkpoint.run(batch_parameters={"dataframe": frames[frame]})
        for suite_result in result.run_results.values():
            for r in suite_result.results:
                cfg = r.expectation_config
                column = cfg.kwargs.get("column")
                observed = _observed(r) if row_name is None else _failing_rows(r, row_name, column)
                if len(frames[frame]) == 1 and column in frames[frame]:
                    observed = f"value: {frames[frame][column].iloc[0]:.4g}"   # exact counts
                report.checks.append(CheckResult(
                    frame, cfg.type, column, bool(r.success), bool(cfg.meta.get("critical")),
                    cfg.meta.get("why", ""), observed))
    # Once for all suites: an UpdateDataDocsAction per checkpoint rebuilt the whole site each time.
    context.build_data_docs(site_names=["vigil"])
    report.docs_index = f"{docs_dir}/index.html"
    return report


def _failing_rows(result, row_name: str, column: str) -> str:
    """The rows (features, files) a check failed on: how many, and the first few by name, with
    their values where those are numbers."""
    r = result.result or {}
    count = r.get("unexpected_count") or 0
    if not count:
        return f"every {row_name} passed"
    failing = (r.get("partial_unexpected_index_list") or [])[:NAMES_SHOWN]
    shown = ", ".join(str(row[row_name]) if isinstance(row[column], (bool, np.bool_))
                      else f"{row[row_name]} ({float(row[column]):.3g})" for row in failing)
    more = f" and {count - len(failing)} more" if count > len(failing) else ""
    return f"{count} {row_name}{'s' if count > 1 else ''}: {shown}{more}"


def frames_for_run(scores: pd.DataFrame, manifest: dict, duplicates: int,
                   inputs: pd.DataFrame | None) -> dict[str, pd.DataFrame]:
    """The frames the suites validate: a sample of the scores, the run's summary, the per-file stats."""
    counts = manifest["counts"]
    frames = {
        "scores": scores,
        "summary": pd.DataFrame([{
            "scored": counts["scored"],
            "duplicate_ids": duplicates,
            "anomaly_rate": counts["anomalies"] / counts["scored"] if counts["scored"] else 0.0,
            "bad_fraction": counts["dead_lettered"] / counts["read"] if counts["read"] else 0.0}]),
        "files": pd.DataFrame([{"file": i["uri"], "fully_read": bool(i["fully_read"])}
                               for i in manifest["inputs"]] or [{"file": "", "fully_read": True}]
                              ).set_index("file"),
    }
    if inputs is not None:
        frames["inputs"] = inputs
    return frames


def specs_for_run(manifest: dict, model_manifest: dict, max_anomaly_multiple: float) -> dict:
    """Each frame's suite for this run, with its target FPR, anomaly-rate bound and bad fraction."""
    opts = manifest["options"]
    return {"scores": suites.scores_suite(),
            "summary": suites.summary_suite(opts["target_fpr"], max_anomaly_multiple,
                                            opts["max_bad_fraction"]),
            "files": suites.files_suite(),
            "inputs": suites.inputs_suite(model_manifest["profile"], model_manifest["input"]["shape"],
                                          model_manifest["training"].get("source_shapes"))}


def input_frame(records, kind: str, feature_columns: list[str],
                bounds: dict[str, tuple[float, float]]) -> pd.DataFrame:
    """The sampled raw records as the ``inputs`` frame: each image's shape, or one row per
    feature with its share of missing (or non-finite) values and, of the others, its share
    outside ``bounds`` (``vigil.schemas.expectations.feature_bounds``)."""
    if kind == "image":
        from vigil.pipeline.decode import source_shape
        return pd.DataFrame({"shape": [source_shape(r.value) for r in records]})
    rows = [np.asarray(r.value, dtype=np.float64) for r in records if r.value is not None]
    x = np.stack(rows) if rows else np.zeros((0, len(feature_columns)))
    finite = np.isfinite(x)
    lo = np.array([bounds.get(c, (-np.inf, np.inf))[0] for c in feature_columns])
    hi = np.array([bounds.get(c, (-np.inf, np.inf))[1] for c in feature_columns])
    with np.errstate(invalid="ignore"):
        outside = finite & ((x < lo) | (x > hi))
    n_finite = finite.sum(axis=0)
    return pd.DataFrame({
        "missing_share": 1.0 - n_finite / len(x) if len(x) else np.zeros(len(feature_columns)),
        "outside_range_share": outside.sum(axis=0) / np.maximum(n_finite, 1)},
        index=pd.Index(feature_columns, name="feature"))


def to_json(report: QualityReport) -> str:
    """The checks as strict JSON (a non-finite observation is null)."""
    doc = {"success": report.success, "checks": [c.__dict__ for c in report.checks],
           "docs_index": report.docs_index}
    return json.dumps(strict_json(doc), indent=1, allow_nan=False, default=str)
