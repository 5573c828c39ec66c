"""``<run>/report/``: data-quality checks, Data Docs, plots and one index page."""
from __future__ import annotations

import html
import json
import logging
import os

import tensorflow as tf

from vigil.models import registry
from vigil.models.bundle import Bundle
from vigil.pipeline.commit import MANIFEST, is_published, reasons_text, require_published
from vigil.pipeline.config import absolute_uri
from vigil.pipeline.decode import DecodeSpec, decode
from vigil.pipeline.readers import ReadSpec
from vigil.pipeline.records import ScoringInput
from vigil.pipeline.report import plots, quality, sample
from vigil.schemas import expectations as suites
from vigil.schemas.tables import SCORE_NAMES

LOG = logging.getLogger("vigil.report")


def _history(run_dir: str, model: str, target: float) -> list[tuple[str, float]]:
    """(run id, anomaly rate) of the published runs beside this one of the same model name
    at the same target FPR: other models' or other targets' rates are not comparable."""
    root = os.path.dirname(run_dir.rstrip("/"))
    out = []
    for name in sorted(tf.io.gfile.listdir(root)):
        d = f"{root}/{name.rstrip('/')}"
        if name.startswith(".") or not is_published(d):
            continue
        with tf.io.gfile.GFile(f"{d}/{MANIFEST}") as f:
            other = json.load(f)
        if other["model"]["name"] != model or other["thresholds"].get("target_fpr") != target:
            continue
        c = other["counts"]
        if c["scored"]:                 # a run that scored nothing has no rate
            out.append((name.rstrip("/"), c["anomalies"] / c["scored"]))
    return out


def build_run_report(run_dir: str, max_anomaly_multiple: float = 3.0, sample_rows: int = 100_000,
                     input_rows: int = 5_000, top_n: int = 8, bundle: Bundle | None = None
                     ) -> quality.QualityReport:
    """Write ``run_dir/report/`` and return the data-quality result.

    ``bundle``: the model version the run was scored with, already loaded and verified (the
    scoring command passes its own); otherwise, or if it is another version, it is loaded.
    """
    run_dir = require_published(absolute_uri(run_dir))
    with tf.io.gfile.GFile(f"{run_dir}/{MANIFEST}") as f:
        manifest = json.load(f)
    m = manifest["model"]
    if bundle is None or bundle.path != registry.version_dir(m["registry"], m["name"], m["version"]):
        bundle = registry.load(m["registry"], m["name"], m["version"])
    out = f"{run_dir}/report"
    for built in ("data_docs", "plots"):          # a rebuilt report holds this build's results only
        if tf.io.gfile.isdir(f"{out}/{built}"):
            tf.io.gfile.rmtree(f"{out}/{built}")
    tf.io.gfile.makedirs(f"{out}/plots")
    cols = ["id", *SCORE_NAMES, *(f"{n}_pvalue" for n in SCORE_NAMES), "anomaly_score",
            "anomaly_pvalue", "model_version"]
    scores = sample.sample_scores(run_dir, cols, sample_rows).to_pandas()
    kind = bundle.config.kind
    features = list(bundle.preprocessing.feature_columns)
    spec = ReadSpec("parquet" if kind == "features" else "image", manifest["options"]["id_column"],
                    tuple(features))
    inputs = quality.input_frame(sample.sample_inputs(manifest["inputs"], spec, input_rows), kind, features,
                                 suites.feature_bounds(bundle.manifest["profile"]))
    frames = quality.frames_for_run(scores, manifest, sample.duplicate_ids(run_dir), inputs)
    result = quality.validate(frames, quality.specs_for_run(manifest, bundle.manifest, max_anomaly_multiple),
                              f"{out}/data_docs")
    with tf.io.gfile.GFile(f"{out}/validation.json", "w") as f:
        f.write(quality.to_json(result))

    thresholds = manifest["thresholds"]
    # Complexity-adjusted thresholds (images) are not in the raw scores' units: only the
    # combined score's is drawn.
    drawn = {"anomaly_score": thresholds.get("anomaly_score")} if bundle.calibration.slopes \
        else thresholds
    if len(scores):
        plots.score_histograms({c: scores[c].to_numpy() for c in (*SCORE_NAMES, "anomaly_score")},
                               drawn, f"{out}/plots/scores.png")
    plots.rate_history(_history(run_dir, m["name"], thresholds["target_fpr"]), manifest["run_id"],
                       thresholds["target_fpr"],
                       f"model {m['name']} at target FPR {thresholds['target_fpr']:g}",
                       f"{out}/plots/anomaly_rate.png")
    top = sample.top_anomalies(run_dir, top_n).to_pylist()
    if top and kind == "image":
        found = sample.find_records(manifest["inputs"], spec, {r["id"] for r in top})
        dspec = DecodeSpec("image", tuple(bundle.config.input_shape),
                           jpeg_dct_scaling=bundle.preprocessing.jpeg_dct_scaling)
        items = []
        scorer = bundle.scorer()
        for r in top:
            rec = found.get(r["id"])
            dec = decode(rec, dspec) if rec else None
            if isinstance(dec, ScoringInput):
                x = bundle.preprocessing.transform(dec.x[None])
                items.append((r["id"], r["anomaly_score"], x[0], scorer.reconstruct(x)[0]))
        plots.image_anomalies(items, f"{out}/plots/top_anomalies.png")
    elif top:
        names = features or [f"f{i}" for i in range(bundle.config.input_dim)]
        plots.feature_anomalies([(r["id"], r["anomaly_score"],
                                  [(names[t["index"]], t["contribution"]) for t in r["top_features"]])
                                 for r in top], f"{out}/plots/top_anomalies.png")
    with tf.io.gfile.GFile(f"{out}/index.html", "w") as f:
        f.write(_page(manifest, result, top, _validation_pages(f"{out}/data_docs")))
    return result


def _validation_pages(docs_dir: str) -> dict[str, str]:
    """Suite name -> its GX validation page, relative to report/.  These pages are plain
    HTML that reads offline; GX's own index lists them with scripts from a CDN."""
    pages = {}
    root = f"{docs_dir}/validations"
    if tf.io.gfile.isdir(root):
        for path in sorted(tf.io.gfile.glob(f"{root}/*/*/*/*.html")):
            suite = path[len(root) + 1:].split("/", 1)[0]
            pages[suite.removeprefix("vigil-")] = os.path.relpath(path, os.path.dirname(docs_dir))
    return pages


def _check_rows(checks, grouped: bool = False) -> str:
    """Table rows of checks, failures first; ``grouped`` puts one kind of check failing on
    many columns (values out of the training range) in one row naming them all."""
    esc = html.escape
    groups: dict[tuple, list] = {}
    for k in sorted(checks, key=lambda k: (k.success, not k.critical)):
        key = (k.success, k.critical, k.frame, k.expectation, k.why) if grouped else (id(k),)
        groups.setdefault(key, []).append(k)
    rows = []
    for members in groups.values():
        k = members[0]
        columns = ", ".join(esc(m.column or "") for m in members)
        observed = esc(k.observed) if len(members) == 1 else f"{len(members)} columns"
        rows.append(f"<tr class='{'ok' if k.success else ('fail' if k.critical else 'warn')}'>"
                    f"<td>{'pass' if k.success else ('CRITICAL' if k.critical else 'warning')}</td>"
                    f"<td>{esc(k.frame)}</td><td>{esc(k.expectation)}</td><td>{columns}</td>"
                    f"<td>{esc(k.why)}</td><td>{observed}</td></tr>")
    return "".join(rows)


def _page(manifest: dict, result: quality.QualityReport, top: list[dict],
          validation_pages: dict[str, str]) -> str:
    """The run at a glance first (counts, rate against target, verdict, what failed,
    thresholds), then the plots, then every check, folded.  Self-contained: it loads
    nothing from the network."""
    c, t = manifest["counts"], manifest["thresholds"]
    target = t["target_fpr"]
    rate = (f"{c['anomalies'] / c['scored']:.2%}</b>anomaly rate (target FPR {target:g}, "
            f"{c['anomalies'] / c['scored'] / target:.1f}x)") if c["scored"] else \
        f"none</b>anomaly rate: nothing was scored (target FPR {target:g})"
    scores_plot = '<img src="plots/scores.png" alt="score histograms">' if c["scored"] else \
        "<p>No records were scored.</p>"
    esc = html.escape
    failed = [k for k in result.checks if not k.success]
    status = "passed" if result.success else (
        "FAILED: critical checks failed" if result.critical_failures else "passed with warnings")
    verdict = "ok" if result.success else ("fail" if result.critical_failures else "warn")
    header = ("<tr><th></th><th>frame</th><th>expectation</th><th>column</th><th>why</th>"
              "<th>observed</th></tr>")
    failed_table = (f"<table>{header}{_check_rows(failed, grouped=True)}</table>" if failed
                    else "<p>Every check passed.</p>")
    threshold = t.get("anomaly_score")
    no_flag = "" if threshold is not None else (
        "<p class='warn'>This run could flag nothing: the model's calibration has too few normal "
        f"values for a threshold at target FPR {target:g}.</p>")
    partial = [i for i in manifest["inputs"] if not i["fully_read"]]
    files = ("<h2>Files not fully read</h2><table><tr><th>file</th><th>records kept</th>"
             "<th>records lost</th><th>reason</th></tr>" + "".join(
                 f"<tr class='warn'><td>{esc(i['uri'])}</td><td>{i['records']}</td>"
                 f"<td>{i.get('failed_records', 1)}{'' if i.get('count_known', True) else ' or more'}"
                 f"</td><td>{esc(str(i['failure']))}</td></tr>" for i in partial) + "</table>"
             ) if partial else ""
    skipped = manifest.get("skipped", [])
    skipped_html = ("<h2>Matched paths not read</h2><ul>" + "".join(
        f"<li>{esc(s['uri'])}: {esc(s['skipped'])}</li>" for s in skipped) + "</ul>") if skipped else ""
    thresholds = "".join(f"<tr><td>{esc(k)}</td><td>{v:.6g}</td></tr>" if isinstance(v, float)
                         else f"<tr><td>{esc(k)}</td><td>{'none' if v is None else esc(str(v))}</td></tr>"
                         for k, v in t.items() if k != "target_fpr")
    tops = "".join(f"<li>{esc(r['id'])} — {r['anomaly_score']:.4g}</li>" for r in top)
    tops_html = f'<ol>{tops}</ol><img src="plots/top_anomalies.png" alt="top anomalies">' if top else \
        "<p>No records were scored.</p>"
    by_reason = c.get("dead_letter_reasons")      # runs published before it was counted lack it
    reasons = f"<br><small>{esc(reasons_text(by_reason))}</small>" if by_reason else ""
    passed = len(result.checks) - len(failed)
    docs = " · ".join(f'<a href="{esc(href)}">{esc(suite)}</a>' for suite, href in validation_pages.items()) \
        or "none"
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>vigil run {esc(manifest['run_id'])}</title>
<style>body{{font-family:sans-serif;margin:1.5em 2em;max-width:1280px;font-size:15px}}
td,th{{padding:3px 8px;text-align:left}}table{{border-collapse:collapse}}
tr.fail{{background:#f8d7da}}tr.warn{{background:#fff3cd}}tr.ok{{background:#e8f5e9}}
.card{{display:flex;gap:28px;flex-wrap:wrap;margin:10px 0 16px}}.card div{{min-width:110px}}
.card b{{display:block;font-size:24px}}.verdict{{padding:6px 10px;display:inline-block}}
.verdict.ok{{background:#e8f5e9}}.verdict.warn{{background:#fff3cd}}.verdict.fail{{background:#f8d7da}}
p.warn{{background:#fff3cd;border:1px solid #e0c36a;padding:8px}}
img{{max-width:100%;border:1px solid #ddd;margin:6px 0}}
summary{{cursor:pointer;font-size:1.2em}}</style></head>
<body><h1>vigil run {esc(manifest['run_id'])}</h1>
<p>model <b>{esc(manifest['model']['name'])}/{esc(manifest['model']['version'])}</b></p>
<div class="card"><div><b>{c['read']}</b>read</div><div><b>{c['scored']}</b>scored</div>
<div><b>{c['dead_lettered']}</b>dead-lettered{reasons}</div><div><b>{c['anomalies']}</b>anomalies</div>
<div><b>{rate}</div>
<div><b>{'none' if threshold is None else f'{threshold:.4g}'}</b>threshold on anomaly_score</div></div>
{no_flag}
<h2 class="verdict {verdict}">Data quality: {status} ({passed} of {len(result.checks)} checks passed)</h2>
{failed_table}
<h2>Scores</h2>{scores_plot}
<h2>Anomaly rate across runs</h2><img src="plots/anomaly_rate.png" alt="anomaly rate history">
<h2>Top anomalies</h2>{tops_html}
{files}{skipped_html}
<h2>Thresholds at target FPR {target:g}</h2><table>{thresholds}</table>
<details><summary>All {len(result.checks)} data-quality checks</summary>
<table>{header}{_check_rows(result.checks)}</table></details>
<p>More: <a href="validation.json">validation results (JSON)</a> ·
<a href="../manifest.json">run manifest</a> · great-expectations validation results:
{docs}</p>
</body></html>
"""
