"""Peak memory per worker process: one model copy per process (default) or one shared copy.

``vigil score`` runs on Beam's local runner with two SDK worker processes
(``--direct_num_workers 2 --direct_running_mode multi_processing``, the layout of a
Dataflow worker VM with several SDK processes), once with ``--model-copies 0`` (every
worker process loads the model) and once with ``--model-copies 1`` (Beam loads one copy
in one of the worker processes, which serves it to the others through a proxy).  While it runs, every process
under it is sampled from /proc (VmHWM, its peak RSS) every 0.2 s.  Modes are interleaved.

    python tests/benchmarks/worker_memory.py [--kind image|features] [--records 2000] [--repeats 2]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import mnist_t10k, table, write_json  # noqa: E402

from tests import helpers  # noqa: E402

VIGIL = str(Path(sys.executable).parent / "vigil")


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def _tree(pid: int) -> list[int]:
    todo, seen = [pid], []
    while todo:
        p = todo.pop()
        seen.append(p)
        todo += _children(p)
    return seen


def _status(pid: int) -> tuple[str, int] | None:
    """(role, peak RSS in MiB) of a process, or None once it is gone."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        hwm = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                   if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return None
    if cmd.startswith("/bin/sh "):
        return None                 # the shell that starts a worker
    role = "sdk worker" if "sdk_worker_main" in cmd else "launcher" if "vigil" in cmd and " score" in cmd \
        else "other"
    return role, hwm // 1024


def measure(args: list[str], cwd: Path) -> dict:
    """Run one ``vigil score`` and sample its process tree until it exits."""
    started = time.time()
    proc = subprocess.Popen([VIGIL, *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    peaks: dict[int, tuple[str, int]] = {}
    while proc.poll() is None:
        for pid in _tree(proc.pid):
            got = _status(pid)
            if got:
                peaks[pid] = (got[0], max(got[1], peaks.get(pid, ("", 0))[1]))
        time.sleep(0.2)
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"vigil score failed ({proc.returncode}): {err.strip()[-500:]}")
    workers = sorted((mb for role, mb in peaks.values() if role == "sdk worker"), reverse=True)
    return {"seconds": round(time.time() - started, 1), "worker_peaks_mb": workers,
            "other_processes": sum(role == "other" for role, _ in peaks.values()),
            "launcher_peak_rss_mb": max((mb for r, mb in peaks.values() if r == "launcher"), default=0),
            "sum_of_peaks_mb": sum(mb for _, mb in peaks.values())}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kind", choices=["image", "features"], default="image")
    ap.add_argument("--records", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--tag", default="")
    a = ap.parse_args()
    from vigil.jobs.train import TrainJobConfig, run_training
    from vigil.models.config import TrainConfig
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if a.kind == "image":
            images, labels = mnist_t10k()
            helpers.image_shards(work / "train", images[:2000], labels[:2000])
            helpers.image_shards(work / "in", images[2000:2000 + a.records], labels[2000:2000 + a.records],
                                 shards=8)
            glob = "in/*.tfrecord"
        else:
            x, y = helpers.cardio()
            helpers.table_shards(work / "train", x[y == 0][:1200], y[y == 0][:1200])
            helpers.table_shards(work / "in", x[:a.records], y[:a.records], shards=8)
            glob = "in/*.parquet"
        train_glob = str(work / "train" / ("*.tfrecord" if a.kind == "image" else "*.parquet"))
        out = run_training(TrainJobConfig((train_glob,), str(work / "reg"), "m",
                                          train=TrainConfig(epochs=2, verbose=0)))
        model_mb = sum(f.stat().st_size for f in (work / "reg" / "m" / "versions" / out.version).rglob("*")
                       if f.is_file()) / 2**20
        runs = []
        for rep in range(a.repeats):
            for copies in (0, 1):           # interleaved: the machine's noise hits both alike
                args = ["score", "--input", glob, "--registry", "reg", "--name", "m", "--model-version",
                        out.version, "--output", "runs", "--run-id", f"c{copies}-{rep}", "--no-report",
                        "--direct_num_workers", "2", "--direct_running_mode", "multi_processing",
                        "--model-copies", str(copies)]
                runs.append({"model_copies": copies, "repeat": rep, **measure(args, work)})
                print(runs[-1], flush=True)
    rows = [[r["model_copies"] or "0 (one per process)", r["repeat"],
             " + ".join(map(str, r["worker_peaks_mb"])), r["other_processes"],
             r["launcher_peak_rss_mb"], r["sum_of_peaks_mb"], r["seconds"]] for r in runs]
    print(f"\n{a.kind} model, {a.records} records, bundle {model_mb:.1f} MiB on disk")
    print(table(rows, ["model copies", "rep", "peak RSS per worker MiB", "other procs",
                       "launcher MiB", "sum MiB", "s"]))
    path = write_json(f"worker-memory-{a.kind}{a.tag}.json",
                      {"kind": a.kind, "records": a.records, "bundle_mb": round(model_mb, 2),
                       "command": f"python tests/benchmarks/worker_memory.py --kind {a.kind}", "runs": runs})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
