"""Shared by the benchmarks: the protocols module, peers' numbers, result tables.

The benchmarks (and only they; the test suite reads nothing outside the repository) use
the team's shared data: the folder named by ``$VIGIL_SHARED``, else ``../shared`` beside
the checkout, holding ``data/`` and ``bench/protocols.py``.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE.parents[1]))   # the repo (for tests.helpers), when run as a script


def shared_root() -> Path:
    """The team's shared folder: ``$VIGIL_SHARED``, else ``../shared`` beside the checkout."""
    root = Path(os.environ.get("VIGIL_SHARED") or HERE.parents[2] / "shared")
    if not (root / "data").is_dir() or not (root / "bench").is_dir():
        raise SystemExit(f"benchmarks need the team's shared data: no data/ and bench/ in {root}; "
                         "set VIGIL_SHARED to the folder that holds them")
    return root


SHARED_BENCH = shared_root() / "bench"


def protocols():
    spec = importlib.util.spec_from_file_location("protocols", SHARED_BENCH / "protocols.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def mnist_t10k():
    """(images uint8 (10000, 28, 28), labels) of the shared MNIST test set."""
    return protocols().load_mnist_t10k()


def best_peers() -> dict[str, dict[str, tuple[str, float]]]:
    """protocol -> case name -> (best peer, AUROC), parsed from peers.md."""
    text = (SHARED_BENCH / "peers.md").read_text()
    out, current, header = {}, None, []
    for line in text.splitlines():
        m = re.match(r"### (P\d) (\S+)", line)
        if m:
            current, header = m.group(2), []
            out[current] = {}
            continue
        if current and line.startswith("| case"):
            header = [c.strip() for c in line.strip("|").split("|")]
        elif current and header and line.startswith("|") and not line.startswith("|---"):
            cells = [c.strip().strip("*") for c in line.strip("|").split("|")]
            peers = {h: float(v) for h, v in zip(header[1:-1], cells[1:-1]) if re.match(r"^[\d.]+$", v)}
            if peers:
                name = max(peers, key=peers.get)
                out[current][cells[0]] = (name, peers[name])
    return out


def pin_threads(threads: int) -> None:
    """Quiet logs, and ``threads`` TensorFlow threads (0: TensorFlow's default, a thread
    per core), set before TensorFlow does any work.

    TensorFlow splits its sums by thread, so a fixed count makes trained models, and the
    numbers measured on them, depend on the code and the data and not on the machine.
    """
    import logging
    logging.basicConfig(level=logging.ERROR)
    if threads:
        import tensorflow as tf
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)


def matmul_rate(dtype: str, n: int = 2048, reps: int = 10) -> float:
    """FLOP/s of an n x n matmul in ``dtype`` on this machine's TensorFlow."""
    import tensorflow as tf
    a = tf.cast(tf.random.stateless_normal([n, n], seed=[1, 2]), dtype)
    tf.matmul(a, a).numpy()
    started = time.perf_counter()
    for _ in range(reps):
        tf.matmul(a, a).numpy()
    return 2 * n ** 3 * reps / (time.perf_counter() - started)


def flops_per_record(scorer) -> float:
    """FLOPs of one block through the scoring function (TensorFlow's profiler), per record."""
    import tensorflow as tf
    from tensorflow.python.profiler import model_analyzer, option_builder
    graph = tf.function(scorer._score_batch).get_concrete_function(   # noqa: SLF001
        tf.TensorSpec([scorer.block, *scorer.config.input_shape], tf.float32)).graph
    options = option_builder.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    return model_analyzer.profile(graph, options=options).total_float_ops / scorer.block


def write_json(name: str, payload: dict) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / name
    path.write_text(json.dumps(payload, indent=1))
    return path


def table(rows: list[list], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    fmt = " | ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*header), "-+-".join("-" * w for w in widths)]
    return "\n".join([*lines, *(fmt.format(*map(str, r)) for r in rows)])
