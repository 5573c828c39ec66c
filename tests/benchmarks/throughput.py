"""Throughput against the machine, for images and tables, in one run and one JSON.

For each kind (``--kinds``) it trains a small model once and builds input shards: images
are MNIST-sized PNG TFRecords (the 10,000 shared MNIST images repeated with new ids),
tables are Parquet (ADBench cardio from ``tests/fixtures``, its 1,831 rows repeated with
new ids).  Then, in ``--rounds`` rounds, each measure taken beside the others so that the
machine's noise falls on all of them alike:

  * the fp32 and bf16 rates of a 2048 x 2048 matmul (FLOP/s);
  * bare: records/s of ``Scorer`` on preprocessed arrays, at vigil's batch size;
  * pipeline: two ``vigil score`` runs (``small`` and ``records`` records), each in a fresh
    process; steady records/s = (N - n) / (t(N) - t(n)), which cancels start-up, and the
    fixed cost t(n) - n / steady (imports, model load, tracing, the Beam graph, the drain);

and once: FLOPs per record (TensorFlow's profiler on one scoring block), the run report of
the large run (seconds), and the peak RSS of whole runs at two sizes.  The roofline
fraction is bare records/s x FLOPs per record / matmul FLOP/s.  The medians of the rounds
go to ``throughput.json``.  TensorFlow runs as ``vigil`` runs it (``SCORING_ENV``).

    python tests/benchmarks/throughput.py [--kinds image,features] [--rounds 3]
                                          [--records N] [--small n] [--rss n1,n2]
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
from common import flops_per_record, matmul_rate, table, write_json  # noqa: E402

CARDIO = Path(__file__).resolve().parents[1] / "fixtures" / "adbench-6_cardio.npz"
# Default sizes per kind: a table row scores ~20x faster than an image.
# bfloat16's agreement with float32 is measured on images the model did not train on.
SIZES = {"image": {"records": 20_000, "small": 2_000, "rss": (20_000, 100_000), "agreement_from": 2_000},
         "features": {"records": 100_000, "small": 10_000, "rss": (100_000, 1_000_000)}}


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


def make_image_shards(directory: Path, n: int, shards: int = 8) -> str:
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
    """A small model of the kind, published as ``tp`` in ``directory/reg``."""
    registry = str(directory / "reg")
    if kind == "features":
        import pandas as pd

        from vigil.models import Detector
        x, y = cardio()
        frame = pd.DataFrame(x[y == 0], columns=[f"f{j}" for j in range(x.shape[1])])
        Detector(epochs=3, seed=0).fit(frame).save(registry, "tp")
        return registry
    from vigil.jobs.train import TrainJobConfig, run_training
    from vigil.models.config import TrainConfig
    glob = make_image_shards(directory / "train", 2000, shards=2)
    run_training(TrainJobConfig((glob,), registry, "tp", train=TrainConfig(epochs=2, verbose=0)))
    return registry


def preprocessed(bundle, kind: str):
    from common import mnist_t10k
    raw = cardio()[0] if kind == "features" else mnist_t10k()[0][..., None]
    return bundle.preprocessing.transform(raw)


def bare_rate(scorer, x, n: int, batch: int) -> float:
    """Records/s of the scorer alone on n records, ``batch`` per call."""
    import numpy as np
    scorer(x[np.arange(batch) % len(x)])   # trace once
    started = time.perf_counter()
    for i in range(0, n, batch):
        j = np.arange(i, min(i + batch, n)) % len(x)
        scorer(x[j])
    return n / (time.perf_counter() - started)


CHILD = """
import json, sys, time
import vigil.models
from vigil.pipeline.config import ScoreConfig
from vigil.pipeline.options import pipeline_options
from vigil.pipeline.run import plan_run, score
cfg = ScoreConfig(inputs=({glob!r},), registry={reg!r}, name="tp", output={out!r}, run_id="tp",
                  overwrite=True, batch_size={batch}, precision={precision!r})
t = time.time()
plan = plan_run(cfg)
result = score(plan, pipeline_options(cfg, {beam_args!r}))
seconds, report = time.time() - t, None
if {report}:
    from vigil.pipeline.report.run_report import build_run_report
    t = time.time()
    build_run_report(result.run_dir, bundle=plan.bundle)
    report = time.time() - t
# VmHWM, not ru_maxrss: Linux keeps ru_maxrss across exec, so a child would report its parent's peak.
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({{"seconds": seconds, "scored": result.manifest["counts"]["scored"],
                  "report_seconds": report, "peak_rss_mb": hwm / 1024}}))
"""


def pipeline_run(glob: str, registry: str, out: str, batch: int, beam_args: list[str],
                 report: bool = False, precision: str = "float32") -> dict:
    """One ``vigil score`` run in a fresh process: seconds, records scored, peak RSS (and the
    report's seconds)."""
    code = CHILD.format(glob=glob, reg=registry, out=out, batch=batch, beam_args=beam_args, report=report,
                        precision=precision)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def agreement(full, low, x) -> dict:
    """How far ``low``'s scores are from ``full``'s on ``x``: per score, Spearman's rank
    correlation, the largest and median relative difference, and whether the bits are equal."""
    import numpy as np
    from scipy.stats import spearmanr
    a, b = full(x), low(x)
    out = {}
    for name in a:
        if name in ("top_index", "top_contribution"):
            continue
        rel = np.abs(b[name] - a[name]) / np.maximum(np.abs(a[name]), 1e-12)
        out[name] = {"spearman": float(spearmanr(a[name], b[name])[0]), "max_rel": float(rel.max()),
                     "median_rel": float(np.median(rel)), "identical": bool(np.array_equal(a[name], b[name]))}
    out["top_index_equal_share"] = float(np.mean(a["top_index"] == b["top_index"]))
    return out


def measure(kind: str, tmp: Path, sizes: dict, rounds: int, beam_args: list[str]) -> dict:
    """Every measure of one kind (see the module docstring)."""
    from vigil.models import registry as reg
    from vigil.pipeline.config import BATCH_SIZE
    batch = BATCH_SIZE[kind]
    registry = train(tmp / kind, kind)
    bundle = reg.load(registry, "tp")
    scorer = bundle.scorer()
    # bfloat16 is for the convolutional decoder; tables' dense nets gain nothing from it.
    low = bundle.scorer("bfloat16") if kind == "image" else None
    x = preprocessed(bundle, kind)
    shards = make_table_shards if kind == "features" else make_image_shards
    n_small, n_large = sizes["small"], sizes["records"]
    globs = {n: shards(tmp / kind / f"in-{n}", n) for n in sorted({n_small, n_large, *sizes["rss"]})}

    def run(n: int, report: bool = False, precision: str = "float32") -> dict:
        out = pipeline_run(globs[n], registry, str(tmp / kind / f"out-{n}"), batch, beam_args, report,
                           precision)
        assert out["scored"] == n
        print(f"{kind} ({precision}): {n} records in {out['seconds']:.1f} s, "
              f"peak RSS {out['peak_rss_mb']:.0f} MB", flush=True)
        return out

    per_round = []
    for r in range(rounds):
        fp32, bf16 = matmul_rate("float32"), matmul_rate("bfloat16")
        bare = bare_rate(scorer, x, min(n_large, 20 * batch), batch)
        small, large = run(n_small), run(n_large, report=r == 0)
        steady = (n_large - n_small) / (large["seconds"] - small["seconds"])
        per_round.append({"fp32_flops_per_s": fp32, "bf16_flops_per_s": bf16, "bare": bare,
                          "steady": steady, "pipeline_over_bare": steady / bare,
                          "fixed_seconds": small["seconds"] - n_small / steady,
                          "report_seconds": large["report_seconds"]})
        if low is not None:
            low_bare = bare_rate(low, x, min(n_large, 20 * batch), batch)
            low_small, low_large = run(n_small, precision="bfloat16"), run(n_large, precision="bfloat16")
            low_steady = (n_large - n_small) / (low_large["seconds"] - low_small["seconds"])
            per_round[-1].update({"bfloat16_bare": low_bare, "bfloat16_steady": low_steady,
                                  "bfloat16_pipeline_over_bare": low_steady / low_bare})
    # The model's FLOPs: the float32 function's (bfloat16's sub-pixel convolutions compute the
    # same function with more multiplications by zero, which a roofline should not credit).
    flops = flops_per_record(scorer)
    median = {k: statistics.median(r[k] for r in per_round if r[k] is not None) for k in per_round[0]}
    rss = {n: run(n)["peak_rss_mb"] for n in sizes["rss"]}
    return {"batch_size": batch, "block": scorer.block, "flops_per_record": flops, **median,
            "roofline_fp32": median["bare"] * flops / median["fp32_flops_per_s"],
            "roofline_bf16": median["bare"] * flops / median["bf16_flops_per_s"],
            "report_records": n_large, "peak_rss_mb": rss,
            **({"bfloat16_roofline_fp32": median["bfloat16_bare"] * flops / median["fp32_flops_per_s"],
                "bfloat16_agreement": agreement(scorer, low, x[sizes["agreement_from"]:])}
               if low is not None else {}),
            "peak_rss_ratio": rss[sizes["rss"][1]] / rss[sizes["rss"][0]], "sizes": sizes,
            "rounds": per_round}


def summary(kind: str, m: dict) -> list[list[str]]:
    small, large = m["sizes"]["rss"]
    return [
        [kind, "FLOPs per record (profiler)", f"{m['flops_per_record'] / 1e6:.2f} M", ""],
        [kind, "bare Scorer", f"{m['bare']:.0f} records/s",
         f"{m['roofline_fp32']:.3f} of fp32 matmul, {m['roofline_bf16']:.3f} of bf16"],
        [kind, f"pipeline steady ({m['sizes']['small']} -> {m['sizes']['records']})",
         f"{m['steady']:.0f} records/s", f"{m['pipeline_over_bare']:.2f} x bare (goal >= 0.9)"],
        *(low_rows(kind, m) if "bfloat16_bare" in m else []),
        [kind, "fixed cost of a run", f"{m['fixed_seconds']:.1f} s", "start-up and drain"],
        [kind, f"report of {m['report_records']} records", f"{m['report_seconds']:.1f} s", ""],
        [kind, f"peak RSS {small} -> {large}",
         f"{m['peak_rss_mb'][small]:.0f} -> {m['peak_rss_mb'][large]:.0f} MB",
         f"x {m['peak_rss_ratio']:.2f} (goal <= 1.2)"],
    ]


def low_rows(kind: str, m: dict) -> list[list[str]]:
    agree = m["bfloat16_agreement"]
    vae = ("vae_recon_logprob", "vae_elbo", "vae_log_px")
    return [
        [kind, "bare Scorer, --precision bfloat16", f"{m['bfloat16_bare']:.0f} records/s",
         f"{m['bfloat16_roofline_fp32']:.3f} of fp32 matmul (goal >= 1.0)"],
        [kind, "pipeline steady, bfloat16", f"{m['bfloat16_steady']:.0f} records/s",
         f"{m['bfloat16_pipeline_over_bare']:.2f} x bare"],
        [kind, "bfloat16 vs float32, VAE scores", "Spearman >= "
         f"{min(agree[n]['spearman'] for n in vae):.6f}",
         f"max rel. diff {max(agree[n]['max_rel'] for n in vae):.1e}, median "
         f"{max(agree[n]['median_rel'] for n in vae):.1e}"],
        [kind, "bfloat16 vs float32, DAE scores", "identical" if all(
            v["identical"] for n, v in agree.items() if n.startswith("dae_")) else "differ", ""],
    ]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kinds", default="image,features")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--records", type=int, help="large run size (default per kind: SIZES)")
    ap.add_argument("--small", type=int, help="small run size")
    ap.add_argument("--rss", help="two run sizes for peak RSS, 'n1,n2'")
    ap.add_argument("--beam-args", default="", help="extra Beam flags for the pipeline runs")
    ap.add_argument("--tag", default="", help="suffix of the results file")
    args = ap.parse_args(argv)
    from vigil.models.runtime import apply_scoring_env
    apply_scoring_env(os.environ)          # before TensorFlow loads, as the vigil command does
    import vigil.models  # noqa: F401
    result = {"rounds": args.rounds, "beam_args": args.beam_args, "kinds": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.kinds.split(","):
            sizes = dict(SIZES[kind])
            sizes.update({k: v for k, v in (("records", args.records), ("small", args.small)) if v})
            if args.rss:
                sizes["rss"] = tuple(int(v) for v in args.rss.split(","))
            result["kinds"][kind] = measure(kind, Path(tmp), sizes, args.rounds, args.beam_args.split())
    rows = [row for kind, m in result["kinds"].items() for row in summary(kind, m)]
    first = next(iter(result["kinds"].values()))
    rows.append(["", "fp32 / bf16 2048² matmul", f"{first['fp32_flops_per_s'] / 1e9:.0f} / "
                 f"{first['bf16_flops_per_s'] / 1e9:.0f} GFLOP/s", "median of the rounds"])
    print(table(rows, ["kind", "measure", f"value (median of {args.rounds})", "note"]))
    print("written to", write_json(f"throughput{args.tag}.json", result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
