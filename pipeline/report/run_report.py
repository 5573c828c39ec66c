"""``<run>/report/``: data-quality checks, Data Docs, plots and one index page."""
from __future__ import annotations

import html
import json
import logging
import os

import tensorflow as tf

from vigil.models import registry
from vigil.pipeline.commit import MANIFEST, is_published, require_published
from vigil.pipeline.decode import DecodeSpec, decode
from vigil.pipeline.options import absolute_uri
from vigil.pipeline.readers import ReadSpec
from vigil.pipeline.records import ScoringInput
from vigil.pipeline.report import plots, quality, sample
from vigil.schemas.tables import SCORE_NAMES

LOG = logging.getLogger("vigil.report")


def _history(run_dir: str) -> list[tuple[str, float]]:
    root = os.path.dirname(run_dir.rstrip("/"))
    out = []
    for name in sorted(tf.io.gfile.listdir(root)):
        d = f"{root}/{name.rstrip('/')}"
        if name.startswith(".") or not is_published(d):
            continue
        with tf.io.gfile.GFile(f"{d}/{MANIFEST}") as f:
            c = json.load(f)["counts"]
        out.append((name.rstrip("/"), c["anomalies"] / c["scored"] if c["scored"] else 0.0))
    return out


def build_run_report(run_dir: str, max_anomaly_multiple: float = 3.0, sample_rows: int = 100_000,
                     input_rows: int = 5_000, top_n: int = 8) -> quality.QualityReport:
    """Write ``run_dir/report/`` and return the data-quality result."""
    run_dir = require_published(absolute_uri(run_dir))
    with tf.io.gfile.GFile(f"{run_dir}/{MANIFEST}") as f:
        manifest = json.load(f)
    m = manifest["model"]
    bundle = registry.load(m["registry"], m["name"], m["version"])
    out = f"{run_dir}/report"
    tf.io.gfile.makedirs(f"{out}/plots")
    cols = ["id", *SCORE_NAMES, *(f"{n}_pvalue" for n in SCORE_NAMES), "anomaly_score",
            "anomaly_pvalue", "model_version"]
    scores = sample.sample_scores(run_dir, cols, sample_rows).to_pandas()
    kind = bundle.config.kind
    features = list(bundle.preprocessing.feature_columns)
    spec = ReadSpec("parquet" if kind == "features" else "image", manifest["options"]["id_column"],
                    tuple(features))
    inputs = quality.input_frame(sample.sample_inputs(manifest["inputs"], spec, input_rows), kind, features)
    frames = quality.frames_for_run(scores, manifest, sample.duplicate_ids(run_dir), inputs)
    result = quality.validate(frames, quality.specs_for_run(manifest, bundle.manifest, max_anomaly_multiple),
                              f"{out}/data_docs")
    with tf.io.gfile.GFile(f"{out}/validation.json", "w") as f:
        f.write(quality.to_json(result))

    thresholds = manifest["thresholds"]
    plots.score_histograms({c: scores[c].to_numpy() for c in (*SCORE_NAMES, "anomaly_score")},
                           thresholds, f"{out}/plots/scores.png")
    plots.rate_history(_history(run_dir), manifest["run_id"], thresholds["target_fpr"],
                       f"{out}/plots/anomaly_rate.png")
    top = sample.top_anomalies(run_dir, top_n).to_pylist()
    if kind == "image":
        found = sample.find_records(manifest["inputs"], spec, {r["id"] for r in top})
        dspec = DecodeSpec("image", tuple(bundle.config.input_shape))
        items = []
        scorer = bundle.scorer()
        for r in top:
            rec = found.get(r["id"])
            dec = decode(rec, dspec) if rec else None
            if isinstance(dec, ScoringInput):
                x = bundle.preprocessing.transform(dec.x[None])
                items.append((r["id"], r["anomaly_score"], x[0], scorer.reconstruct(x)[0]))
        plots.image_anomalies(items, f"{out}/plots/top_anomalies.png")
    else:
        names = features or [f"f{i}" for i in range(bundle.config.input_dim)]
        plots.feature_anomalies([(r["id"], r["anomaly_score"],
                                  [(names[t["index"]], t["contribution"]) for t in r["top_features"]])
                                 for r in top], f"{out}/plots/top_anomalies.png")
    with tf.io.gfile.GFile(f"{out}/index.html", "w") as f:
        f.write(_page(manifest, result, top))
    return result


def _page(manifest: dict, result: quality.QualityReport, top: list[dict]) -> str:
    c, t = manifest["counts"], manifest["thresholds"]
    rate = c["anomalies"] / c["scored"] if c["scored"] else 0.0
    esc = html.escape
    rows = "".join(
        f"<tr class='{'ok' if k.success else ('fail' if k.critical else 'warn')}'>"
        f"<td>{'pass' if k.success else 'FAIL'}</td><td>{esc(k.frame)}</td>"
        f"<td>{esc(k.expectation)}</td><td>{esc(k.column or '')}</td><td>{esc(k.why)}</td>"
        f"<td>{'critical' if k.critical else 'warning'}</td><td>{esc(k.observed)}</td></tr>"
        for k in sorted(result.checks, key=lambda k: (k.success, not k.critical)))
    thresholds = "".join(f"<tr><td>{esc(k)}</td><td>{v if v is not None else 'none'}</td></tr>"
                         for k, v in t.items())
    tops = "".join(f"<li>{esc(r['id'])} — {r['anomaly_score']:.4g}</li>" for r in top)
    partial = [i for i in manifest["inputs"] if not i["fully_read"]]
    files = ("<h2>Files not fully read</h2><table><tr><th>file</th><th>records kept</th>"
             "<th>reason</th></tr>" + "".join(
                 f"<tr class='warn'><td>{esc(i['uri'])}</td><td>{i['records']}</td>"
                 f"<td>{esc(str(i['failure']))}</td></tr>" for i in partial) + "</table>"
             ) if partial else ""
    status = "passed" if result.success else (
        "FAILED (critical)" if result.critical_failures else "passed with warnings")
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>vigil run {esc(manifest['run_id'])}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1400px}}td,th{{padding:3px 8px;text-align:left}}
table{{border-collapse:collapse}}tr.fail{{background:#f8d7da}}tr.warn{{background:#fff3cd}}
tr.ok{{background:#e8f5e9}}img{{max-width:100%;border:1px solid #ddd;margin:6px 0}}</style></head>
<body><h1>vigil run {esc(manifest['run_id'])}</h1>
<p>model <b>{esc(manifest['model']['name'])}/{esc(manifest['model']['version'])}</b> ·
read {c['read']} · scored {c['scored']} · dead-lettered {c['dead_lettered']} ·
anomalies {c['anomalies']} ({rate:.2%} at target FPR {t['target_fpr']})</p>
<h2>Data quality: {status}</h2>
<p><a href="data_docs/index.html">great-expectations Data Docs</a> ·
<a href="validation.json">validation results (JSON)</a> · <a href="../manifest.json">run manifest</a></p>
<table><tr><th></th><th>frame</th><th>expectation</th><th>column</th><th>why</th><th>level</th><th>observed</th></tr>
{rows}</table>
{files}
<h2>Thresholds</h2><table>{thresholds}</table>
<h2>Scores</h2><img src="plots/scores.png" alt="score histograms">
<h2>Anomaly rate across runs</h2><img src="plots/anomaly_rate.png" alt="anomaly rate history">
<h2>Top anomalies</h2><ol>{tops}</ol><img src="plots/top_anomalies.png" alt="top anomalies">
</body></html>
"""
