"""Scoring throughput: the Beam pipeline against the bare scoring function, and memory.

Builds input shards, trains a small model once, then measures, for ``--kind image``
MNIST-sized PNG TFRecord shards (the 10,000 shared MNIST images repeated with new ids)
and for ``--kind features`` Parquet tables (ADBench cardio from ``tests/fixtures``, its
1,831 rows repeated with new ids):
  * bare:     records/s of ``Scorer`` on preprocessed arrays (same L, K, batch size);
  * pipeline: steady-state records/s of ``vigil score`` = (N - n) / (t(N) - t(n)), which
              cancels start-up (TF import, model load, pipeline construction);
  * peak RSS of a whole scoring run at two sizes (each in a fresh process).

With ``--rounds`` the bare rate and the two pipeline runs are repeated in turn and each
round's ratio is taken in that round, so the machine's noise falls on both alike.

    python tests/benchmarks/throughput.py [--kind image] [--records 100000] [--small 10000]
                                          [--rss 100000,1000000] [--rounds 1]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import table, write_json  # noqa: E402

CARDIO = Path(__file__).resolve().parents[1] / "fixtures" / "adbench-6_cardio.npz"


def cardio():
    import numpy as np
    data = np.load(CARDIO)
    return data["X"].astype(np.float32), data["y"]


def make_table_shards(directory: Path, n: int, shards: int = 8) -> str:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    x, _ = cardio()
    directory.mkdir(parents=True, exist_ok=True)
    for s in range(shards):
        rows = np.arange(s, n, shards)
        cols = {"id": [f"r{i:08d}" for i in rows]}
        cols.update({f"f{j}": x[rows % len(x), j] for j in range(x.shape[1])})
        pq.write_table(pa.table(cols), directory / f"part-{s:03d}.parquet")
    return str(directory / "*.parquet")


def make_shards(directory: Path, n: int, shards: int = 8) -> str:
    import tensorflow as tf
    from common import mnist_t10k

    from tests.helpers import example, png
    images, labels = mnist_t10k()
    encoded = [png(img) for img in images]
    directory.mkdir(parents=True, exist_ok=True)
    writers = [tf.io.TFRecordWriter(str(directory / f"part-{s:03d}.tfrecord")) for s in range(shards)]
    for i in range(n):
        writers[i % shards].write(example(f"r{i:08d}".encode(), encoded[i % 10_000], int(labels[i % 10_000])))
    for w in writers:
        w.close()
    return str(directory / "*.tfrecord")


def train(directory: Path, kind: str) -> str:
    from vigil.jobs.train import TrainJobConfig, run_training
    if kind == "features":
        import pandas as pd

        from vigil.models import Detector
        x, y = cardio()
        frame = pd.DataFrame(x[y == 0], columns=[f"f{j}" for j in range(x.shape[1])])
        Detector(epochs=3, seed=0).fit(frame).save(str(directory / "reg"), "tp")
        return str(directory / "reg")
    from vigil.models.config import TrainConfig
    glob = make_shards(directory / "train", 2000, shards=2)
    run_training(TrainJobConfig((glob,), str(directory / "reg"), "tp",
                                train=TrainConfig(epochs=2, verbose=0)))
    return str(directory / "reg")


def bare_rate(registry: str, n: int, batch: int, kind: str) -> float:
    import numpy as np
    from common import mnist_t10k

    from vigil.models import registry as reg
    bundle = reg.load(registry, "tp")
    scorer = bundle.scorer()
    raw = cardio()[0] if kind == "features" else mnist_t10k()[0][..., None]
    x = bundle.preprocessing.transform(raw)
    ids = [f"r{i:08d}" for i in range(n)]
    scorer(x[np.arange(batch) % len(x)], ids[:batch])   # trace once
    started = time.time()
    for i in range(0, n, batch):
        j = np.arange(i, min(i + batch, n)) % len(x)
        scorer(x[j], ids[i:i + len(j)])
    return n / (time.time() - started)


CHILD = """
import json, resource, sys, time
import vigil.models
from vigil.pipeline.config import ScoreConfig
from vigil.pipeline.options import pipeline_options
from vigil.pipeline.run import plan_run, score
cfg = ScoreConfig(inputs=({glob!r},), registry={reg!r}, name="tp", output={out!r}, run_id="tp",
                  overwrite=True, batch_size={batch})
t = time.time()
result = score(plan_run(cfg), pipeline_options(cfg, {beam_args!r}))
print(json.dumps({{"seconds": time.time() - t, "scored": result.manifest["counts"]["scored"],
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def pipeline_run(glob: str, registry: str, out: str, batch: int, beam_args: list[str]) -> dict:
    code = CHILD.format(glob=glob, reg=registry, out=out, batch=batch,
                        beam_args=beam_args)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kind", choices=("image", "features"), default="image")
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--small", type=int, default=10_000)
    ap.add_argument("--rss", default="100000,1000000", help="two run sizes for peak RSS")
    ap.add_argument("--batch", type=int, default=None, help="--batch-size (default: vigil's for the kind)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="rounds of bare, small run, large run, interleaved; medians reported")
    ap.add_argument("--beam-args", default="", help="extra Beam flags for the pipeline runs")
    ap.add_argument("--tag", default="", help="suffix of the results file")
    args = ap.parse_args(argv)
    import vigil.models  # noqa: F401
    from vigil.pipeline.config import BATCH_SIZE
    batch = args.batch or BATCH_SIZE[args.kind]
    rss_sizes = [int(v) for v in args.rss.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        registry = train(tmp, args.kind)
        shards = make_table_shards if args.kind == "features" else make_shards
        globs = {n: shards(tmp / f"in-{n}", n) for n in sorted({args.small, args.records, *rss_sizes})}

        def run(n: int) -> dict:
            out = pipeline_run(globs[n], registry, str(tmp / f"out-{n}"), batch, args.beam_args.split())
            assert out["scored"] == n
            print(f"{n} records: {out['seconds']:.1f}s, peak RSS {out['peak_rss_mb']:.0f} MB", flush=True)
            return out

        rounds = []
        for _ in range(args.rounds):
            bare = bare_rate(registry, min(args.records, 20_000), batch, args.kind)
            small, large = run(args.small), run(args.records)
            steady = (args.records - args.small) / (large["seconds"] - small["seconds"])
            rounds.append({"bare": bare, "steady": steady, "ratio": steady / bare})
        rss = {n: run(n) for n in rss_sizes}
    bare = statistics.median(r["bare"] for r in rounds)
    steady = statistics.median(r["steady"] for r in rounds)
    ratio = statistics.median(r["ratio"] for r in rounds)
    rss_ratio = rss[rss_sizes[1]]["peak_rss_mb"] / rss[rss_sizes[0]]["peak_rss_mb"]
    result = {"bare_records_per_s": bare, "pipeline_steady_records_per_s": steady,
              "pipeline_over_bare": ratio, "rounds": rounds, "rss_runs": rss, "rss_sizes": rss_sizes,
              "peak_rss_ratio": rss_ratio, "batch_size": batch, "beam_args": args.beam_args,
              "kind": args.kind, "targets": {"pipeline_over_bare": 0.9, "peak_rss_ratio": 1.2}}
    rows = [["bare Scorer", f"{bare:.0f}", ""],
            [f"pipeline steady ({args.small}->{args.records})", f"{steady:.0f}",
             f"{ratio:.2f}x bare (target >= 0.9)"],
            [f"peak RSS {rss_sizes[0]} -> {rss_sizes[1]}",
             f"{rss[rss_sizes[0]]['peak_rss_mb']:.0f} -> {rss[rss_sizes[1]]['peak_rss_mb']:.0f} MB",
             f"{rss_ratio:.2f}x (target <= 1.2)"]]
    print(table(rows, ["measure", f"{args.kind}, records/s (median of {args.rounds})", "vs target"]))
    name = "throughput" + ("-features" if args.kind == "features" else "") + args.tag
    print("written to", write_json(f"{name}.json", result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
