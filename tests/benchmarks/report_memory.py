"""Peak memory of building a run's report, at growing run sizes.

A real scoring run on 1,000 rows gives a genuine manifest, schema and bundle; its scores
are then tiled to N rows (fresh ids, spread over 100k-row Parquet files, with matching
input files and manifest counts), and ``build_run_report`` runs in a fresh process whose
peak RSS is read from ``getrusage``.  The report reads a bounded sample, the top-N and
8-byte id hashes, so peak memory should barely move from 100k to 1M rows.

    python tests/benchmarks/report_memory.py [--sizes 100000,1000000]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from common import table, write_json  # noqa: E402

import vigil.models  # noqa: E402,F401
from vigil.jobs.demo import write_table_shards  # noqa: E402
from vigil.jobs.train import TrainJobConfig, run_training  # noqa: E402
from vigil.models.config import TrainConfig  # noqa: E402
from vigil.pipeline.config import ScoreConfig  # noqa: E402
from vigil.pipeline.options import pipeline_options  # noqa: E402
from vigil.pipeline.readers import file_sha256  # noqa: E402
from vigil.pipeline.run import plan_run, score  # noqa: E402

ROWS_PER_FILE = 100_000
MEASURE = ("import json, resource, sys, time; import vigil.models; "
           "from vigil.pipeline.report.run_report import build_run_report; t = time.time(); "
           "r = build_run_report(sys.argv[1]); "
           "print(json.dumps({'seconds': time.time() - t, 'checks': len(r.checks), "
           "'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))")


def seed_run(work: Path) -> tuple[str, np.ndarray, list[str]]:
    """Train a small dense model and score 1,000 rows for real; return the run folder."""
    rng = np.random.default_rng(0)
    cols = [f"f{j}" for j in range(16)]
    x = rng.normal(size=(3000, 16)) @ rng.normal(size=(16, 16))
    write_table_shards(str(work / "train"), x[:2000], cols, np.zeros(2000), [f"t{i}" for i in range(2000)])
    write_table_shards(str(work / "seed"), x[2000:], cols, np.zeros(1000), [f"s{i}" for i in range(1000)])
    trained = run_training(TrainJobConfig((str(work / "train" / "*.parquet"),), str(work / "reg"), "mem",
                                          train=TrainConfig(epochs=3, verbose=0)))
    cfg = ScoreConfig(inputs=(str(work / "seed" / "*.parquet"),), registry=str(work / "reg"), name="mem",
                      output=str(work / "runs"), model_version=trained.version, run_id="seed")
    result = score(plan_run(cfg), pipeline_options(cfg, []))
    return result.run_dir, x, cols


def inflate(seed_dir: str, x: np.ndarray, cols: list[str], n: int, work: Path) -> str:
    """A published run of n rows built from the seed run's real rows."""
    import shutil
    run = work / f"run-{n}"
    shutil.copytree(seed_dir, run, ignore=shutil.ignore_patterns("report"))
    for sub in ("scores", "inputs"):
        shutil.rmtree(run / sub, ignore_errors=True)
        (run / sub).mkdir()
    seed = pq.read_table(f"{seed_dir}/scores")
    manifest = json.loads((run / "manifest.json").read_text())
    inputs = []
    for start in range(0, n, ROWS_PER_FILE):
        rows = min(ROWS_PER_FILE, n - start)
        ids = [f"r{start + i:09d}" for i in range(rows)]
        src = str(run / "inputs" / f"part-{start // ROWS_PER_FILE:05d}.parquet")
        pick = np.arange(start, start + rows) % len(x)
        pq.write_table(pa.table({"id": ids, **{c: x[pick, j] for j, c in enumerate(cols)}}), src)
        part = seed.take(pa.array(np.arange(start, start + rows) % seed.num_rows))
        part = part.set_column(part.schema.get_field_index("id"), "id", pa.array(ids))
        part = part.set_column(part.schema.get_field_index("source"), "source", pa.array([src] * rows))
        pq.write_table(part, run / "scores" / f"part-{start // ROWS_PER_FILE:05d}.parquet")
        inputs.append({"uri": src, "records": rows, "fully_read": True, "failure": None,
                       "sha256": file_sha256(src), "bytes": Path(src).stat().st_size,
                       "format": "parquet", "root": str(run / "inputs")})
    anomalies = sum(int(pc.sum(pq.read_table(p, columns=["is_anomaly"]).column(0)).as_py() or 0)
                    for p in sorted((run / "scores").glob("*.parquet")))
    manifest["inputs"] = inputs
    manifest["counts"].update(files=len(inputs), records_read=n, read=n, scored=n, dead_lettered=0,
                              file_failures=0, anomalies=anomalies, bad_fraction=0.0)
    (run / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return str(run)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100000,1000000")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    rows, results = [], []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        seed_dir, x, cols = seed_run(work)
        for n in sizes:
            started = time.time()
            run = inflate(seed_dir, x, cols, n, work)
            built = time.time() - started
            out = subprocess.run([sys.executable, "-c", MEASURE, run], capture_output=True, text=True,
                                 check=True, cwd=str(Path(__file__).resolve().parents[2]))
            r = json.loads(out.stdout.strip().splitlines()[-1])
            r.update(rows=n, build_inputs_seconds=round(built, 1))
            results.append(r)
            rows.append([f"{n:,}", f"{r['peak_rss_mb']:.0f}", f"{r['seconds']:.1f}", r["checks"]])
            print(f"{n:,} rows: peak RSS {r['peak_rss_mb']:.0f} MB, report in {r['seconds']:.1f}s",
                  flush=True)
    print(table(rows, ["rows", "peak RSS (MB)", "report seconds", "checks"]))
    growth = results[-1]["peak_rss_mb"] - results[0]["peak_rss_mb"]
    path = write_json("report-memory.json", {"results": results, "rss_growth_mb": round(growth, 1),
                                             "rows_per_file": ROWS_PER_FILE})
    print(f"peak RSS grows {growth:.0f} MB from {sizes[0]:,} to {sizes[-1]:,} rows; written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
