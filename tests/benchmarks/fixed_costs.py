"""What every table run pays: start-up and report costs, and the table scorer against the machine.

Trains the default table model (ADBench cardio's normal rows, a few epochs: scoring cost
does not depend on training length) and measures, rounds interleaved so that the
machine's noise falls on every variant alike:

  * bare ``Scorer`` records/s at several block sizes, beside the fp32 rate of a 2048 x 2048
    matmul timed in the same round; FLOPs per record from TensorFlow's profiler; the
    roofline fraction = records/s x FLOPs per record / matmul FLOP/s;
  * wall time of ``vigil score`` on a small table (256 rows), with and without its report;
  * wall time of ``vigil report`` on a wide table (2,000 features, 1,000 rows).

    python tests/benchmarks/fixed_costs.py [--rounds 3] [--records 256] [--wide 2000]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import flops_per_record, matmul_rate, table, write_json  # noqa: E402

HERE = Path(__file__).resolve().parent
CARDIO = HERE.parents[0] / "fixtures" / "adbench-6_cardio.npz"
VIGIL = str(Path(sys.executable).parent / "vigil")
BLOCKS = (64, 128, 256)


def _frame(x, prefix: str = "f"):
    import pandas as pd
    return pd.DataFrame(x, columns=[f"{prefix}{i}" for i in range(x.shape[1])])


def _write_input(x, path: Path, prefix: str = "f") -> str:
    df = _frame(x, prefix)
    df.insert(0, "id", [f"r{i:07d}" for i in range(len(df))])
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_parquet(path)
    return str(path)


def train(registry: str, name: str, x, epochs: int, prefix: str = "f") -> None:
    from vigil.models import Detector
    Detector(epochs=epochs, seed=0).fit(_frame(x, prefix)).save(registry, name)


def scorer_rate(scorer, x, seconds: float = 3.0) -> float:
    scorer(x[:scorer.block])
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        scorer(x)
        done += len(x)
    return done / (time.perf_counter() - started)


def bare(registry: str, x, rounds: int) -> dict:
    import numpy as np

    from vigil.models import registry as reg
    from vigil.models.scoring import Scorer
    bundle = reg.load(registry, "cardio")
    default = bundle.scorer()
    xs = bundle.preprocessing.transform(np.concatenate([x] * max(1, 4096 // len(x) + 1))[:4096])
    scorers = {b: Scorer(default.members, default.config, seed=default.seed, block=b) for b in BLOCKS}
    rates = {b: [] for b in BLOCKS}
    matmul = []
    for _ in range(rounds):
        matmul.append(matmul_rate("float32"))
        for b, scorer in scorers.items():
            rates[b].append(scorer_rate(scorer, xs))
    flops = {b: flops_per_record(s) for b, s in scorers.items()}
    mm = statistics.median(matmul)
    return {"default_block": default.block, "matmul_flops_per_s": mm, "members": len(default.members),
            "blocks": {b: {"records_per_s": statistics.median(rates[b]), "rounds": rates[b],
                           "flops_per_record": flops[b],
                           "roofline": statistics.median(rates[b]) * flops[b] / mm} for b in BLOCKS}}


def wall(args: list[str], cwd: Path) -> float:
    started = time.perf_counter()
    proc = subprocess.run([VIGIL, *args], cwd=cwd, capture_output=True, text=True)
    took = time.perf_counter() - started
    if proc.returncode not in (0, 4):
        raise RuntimeError(proc.stderr[-3000:])
    return took


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--records", type=int, default=256)
    ap.add_argument("--wide", type=int, default=2000, help="features of the wide table")
    ap.add_argument("--tag", default="", help="suffix of the results file")
    args = ap.parse_args(argv)
    from vigil.models.runtime import apply_scoring_env
    apply_scoring_env(os.environ)          # before TensorFlow loads, as the vigil command does
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import numpy as np
    data = np.load(CARDIO)
    x, y = data["X"].astype(np.float32), data["y"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        registry = str(tmp / "reg")
        train(registry, "cardio", x[y == 0], epochs=5)
        _write_input(x[:args.records], tmp / "small" / "part-0.parquet")
        rng = np.random.default_rng(0)
        wide = rng.normal(size=(1400, args.wide)).astype(np.float32)
        train(registry, "wide", wide[:400], epochs=1, prefix="c")
        _write_input(wide[400:], tmp / "wide" / "part-0.parquet", prefix="c")
        common = ["--registry", registry, "--output", "runs", "--overwrite"]
        assert wall(["score", "--input", "wide/*.parquet", "--name", "wide", "--run-id", "w",
                     "--no-report", *common], tmp) > 0
        runs = {"score_with_report": [], "score_no_report": [], "wide_report": []}
        for _ in range(args.rounds):
            small = ["score", "--input", "small/*.parquet", "--name", "cardio", *common]
            runs["score_with_report"].append(wall([*small, "--run-id", "a"], tmp))
            runs["score_no_report"].append(wall([*small, "--run-id", "b", "--no-report"], tmp))
            runs["wide_report"].append(wall(["report", "runs/w"], tmp))
        result = {"bare": bare(registry, x, args.rounds),
                  "wall_seconds": {k: statistics.median(v) for k, v in runs.items()}, "rounds": runs,
                  "records": args.records, "wide_features": args.wide}
    b = result["bare"]
    rows = [[f"bare table Scorer, block {blk}" + (" (default)" if blk == b["default_block"] else ""),
             f"{v['records_per_s']:.0f} records/s",
             f"{v['roofline']:.3f} of fp32 matmul ({v['flops_per_record'] / 1e6:.2f} MFLOP/record)"]
            for blk, v in b["blocks"].items()]
    secs = result["wall_seconds"]
    rows.append(["fp32 2048² matmul", f"{b['matmul_flops_per_s'] / 1e9:.1f} GFLOP/s", ""])
    for key, what in [("score_with_report", f"vigil score, {args.records} rows, with report"),
                      ("score_no_report", f"vigil score, {args.records} rows, --no-report"),
                      ("wide_report", f"vigil report, {args.wide} features x 1,000 rows")]:
        rows.append([what, f"{secs[key]:.1f} s", "wall, median"])
    print(table(rows, ["measure", "value", "note"]))
    print("written to", write_json(f"fixed-costs{args.tag}.json", result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
