"""Builders of real input files for tests, and the run invariant check."""
from __future__ import annotations

import hashlib
import io
import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def mnist(n: int, offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images (n, 28, 28), labels) from the MNIST test images in tests/fixtures."""
    with np.load(FIXTURES / "mnist-t10k-1200.npz", allow_pickle=False) as d:
        images, labels = d["images"], d["labels"]
    if offset + n > len(images):
        raise ValueError(f"the fixture holds {len(images)} images; asked for {offset}..{offset + n}")
    return images[offset:offset + n], labels[offset:offset + n]


def cardio() -> tuple[np.ndarray, np.ndarray]:
    """ADBench's cardio table from tests/fixtures: X (1831, 21) float64, y = 1 anomaly."""
    with np.load(FIXTURES / "adbench-6_cardio.npz", allow_pickle=False) as d:
        return np.asarray(d["X"], np.float64), np.asarray(d["y"]).astype(int)


def few_shot_embeddings(n_normal: int, n_defect: int, dim: int = 512, rank: int = 12,
                        seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Embedding-like rows: normals near a low-rank subspace, defects pushed off it.

    Like pooled CNN features of one product, the normal rows vary along a few directions
    with small independent noise; a defect adds a bump on a random handful of features.
    Returns (x (n_normal + n_defect, dim), y) with y = 1 for defects, shuffled.
    """
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(rank, dim)) / np.sqrt(rank)
    n = n_normal + n_defect
    x = rng.normal(size=(n, rank)) @ basis + 0.3 * rng.normal(size=(n, dim)) + 2.0
    for row in range(n_normal, n):
        bumped = rng.choice(dim, size=dim // 32, replace=False)
        x[row, bumped] += rng.choice([-1.0, 1.0], size=len(bumped)) * rng.uniform(1.0, 1.5, len(bumped))
    y = np.r_[np.zeros(n_normal, int), np.ones(n_defect, int)]
    order = rng.permutation(n)
    return x[order], y[order]


def png(image: np.ndarray, mode: str | None = None) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(image, mode).save(buf, format="PNG")
    return buf.getvalue()


def example(rid: bytes | None, encoded: bytes | None = None, label: int | None = None,
            features: list[float] | None = None) -> bytes:
    import tensorflow as tf
    feats = {}
    if rid is not None:
        feats["id"] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[rid]))
    if encoded is not None:
        feats["image/encoded"] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[encoded]))
    if label is not None:
        feats["label"] = tf.train.Feature(int64_list=tf.train.Int64List(value=[label]))
    if features is not None:
        feats["features"] = tf.train.Feature(float_list=tf.train.FloatList(value=features))
    return tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString()


def write_tfrecord(path: str | Path, records: list[bytes]) -> str:
    import tensorflow as tf
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as w:
        for r in records:
            w.write(r)
    return str(path)


def image_shards(directory: Path, images: np.ndarray, labels: np.ndarray, shards: int = 2,
                 prefix: str = "img") -> list[str]:
    paths = []
    for s in range(shards):
        recs = [example(f"{prefix}-{i:05d}".encode(), png(images[i]), int(labels[i]))
                for i in range(s, len(images), shards)]
        paths.append(write_tfrecord(directory / f"part-{s}.tfrecord", recs))
    return paths


def table_shards(directory: Path, x: np.ndarray, y: np.ndarray | None = None, shards: int = 2,
                 prefix: str = "row") -> list[str]:
    os.makedirs(directory, exist_ok=True)
    paths = []
    for s in range(shards):
        rows = np.arange(s, len(x), shards)
        cols = {"id": [f"{prefix}-{i:05d}" for i in rows]}
        cols.update({f"f{j}": x[rows, j] for j in range(x.shape[1])})
        if y is not None:
            cols["label"] = y[rows].astype(np.int64)
        path = str(directory / f"part-{s}.parquet")
        pq.write_table(pa.table(cols), path)
        paths.append(path)
    return paths


def score_cli(reg: dict, inputs: list[str], out, *extra: str, run_id: str = "run1"):
    """``vigil score`` through click's CliRunner, on a registry fixture."""
    from click.testing import CliRunner

    from vigil.jobs.cli import cli
    args = ["score", "--registry", reg["registry"], "--name", reg["name"], "--output", str(out),
            "--run-id", run_id, "--no-report"]
    for i in inputs:
        args += ["--input", str(i)]
    return CliRunner().invoke(cli, args + list(extra))


def scores_equal(a_dir: str, b_dir: str) -> bool:
    """Two runs wrote the same rows (ignoring run_id and file layout)."""
    a = read_run(a_dir)[0].sort_by([("source", "ascending"), ("id", "ascending")])
    b = read_run(b_dir)[0].sort_by([("source", "ascending"), ("id", "ascending")])
    return a.drop(["run_id"]).to_pylist() == b.drop(["run_id"]).to_pylist()


def read_run(run_dir: str) -> tuple[pa.Table, pa.Table, dict]:
    scores = ds.dataset(f"{run_dir}/scores", format="parquet").to_table()
    dead = ds.dataset(f"{run_dir}/dead_letter", format="parquet").to_table()
    manifest = json.loads(Path(run_dir, "manifest.json").read_text())
    return scores, dead, manifest


def _id_key(raw) -> str | None:
    if raw is None or raw == b"" or raw == "":
        return None
    if isinstance(raw, bytes):
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw.hex()
    return str(raw)


def input_keys(paths: list[str], root: str | None = None, refused: tuple[str, ...] = ()) -> Counter:
    """(source, id) of every input record by an independent scan, not by the pipeline.

    A file that cannot be read to its end adds one ``(source, None)`` key: the file-level
    dead letter the run must hold for it.  ``refused`` files (refused by policy, e.g. a
    symlink out of the input folder) count as that one key only.
    """
    import tensorflow as tf
    keys: Counter = Counter()
    for p in paths:
        if p in refused or os.path.getsize(p) == 0 or p.endswith(".parquet.gz"):
            keys[(p, None)] += 1
            continue
        if p.endswith((".parquet", ".csv", ".csv.gz")):
            try:
                if p.endswith(".parquet"):
                    ids = pq.read_table(p, columns=["id"]).column("id").to_pylist()
                else:
                    import pyarrow.csv as pacsv
                    ids = pacsv.read_csv(p, convert_options=pacsv.ConvertOptions(
                        column_types={"id": pa.string()})).column("id").to_pylist()
                keys.update((p, _id_key(i)) for i in ids)
            except Exception:  # noqa: BLE001 - unreadable: a key per record its footer holds
                keys[(p, None)] += _footer_rows(p) or 1
        elif p.endswith(".tfrecord"):
            try:
                for raw in tf.data.TFRecordDataset(p).as_numpy_iterator():
                    f = tf.train.Example.FromString(raw).features.feature
                    keys[(p, _id_key(f["id"].bytes_list.value[0] if "id" in f else None))] += 1
            except tf.errors.DataLossError:
                keys[(p, None)] += 1
        else:   # an image file: its id is its path under the glob root
            keys[(p, os.path.relpath(p, root) if root else os.path.basename(p))] += 1
    return keys


def _footer_rows(path: str) -> int | None:
    try:
        return pq.ParquetFile(path).metadata.num_rows
    except Exception:  # noqa: BLE001 - no footer
        return None


def output_keys(run_dir: str) -> Counter:
    scores, dead, _ = read_run(run_dir)
    keys = Counter(zip(scores.column("source").to_pylist(), scores.column("id").to_pylist()))
    for row in dead.select(["source", "id", "id_hex"]).to_pylist():
        keys[(row["source"], row["id"] or row["id_hex"])] += 1
    return keys


def check_invariant(run_dir: str, inputs: list[str], root: str | None = None,
                    refused: tuple[str, ...] = ()) -> None:
    """input records == scored + dead-lettered, each input key exactly once in the output.

    Inputs are counted by an independent scan of the files; the run must be published.
    """
    scores, dead, manifest = read_run(run_dir)
    assert Path(run_dir, "_SUCCESS").exists()
    expected = input_keys(inputs, root, refused)
    got = output_keys(run_dir)
    assert got == expected, {"missing": dict(expected - got), "extra": dict(got - expected)}
    total = sum(expected.values())
    c = manifest["counts"]
    assert c["read"] == c["scored"] + c["dead_lettered"] == total
    assert c["scored"] == scores.num_rows and c["dead_lettered"] == dead.num_rows
    listed = {i["uri"]: i for i in manifest["inputs"]}
    assert set(listed) == set(inputs), set(listed) ^ set(inputs)
    for p in inputs:
        if p not in refused and listed[p]["sha256"] is not None:   # None: too big to read
            assert listed[p]["sha256"] == hashlib.sha256(Path(p).read_bytes()).hexdigest(), p
            assert listed[p]["bytes"] == os.path.getsize(p), p


def same_runs(local: str, remote: str) -> None:
    """Two runs hold the same scores, dead letters and counts (file layout aside)."""
    a_scores, a_dead, a_manifest = read_run(local)
    b_scores, b_dead, b_manifest = read_run(remote)
    order = [("source", "ascending"), ("id", "ascending")]
    assert a_scores.sort_by(order).drop(["run_id"]).to_pylist() == \
        b_scores.sort_by(order).drop(["run_id"]).to_pylist()
    dead_order = [("source", "ascending"), ("reason", "ascending"), ("message", "ascending")]
    assert a_dead.sort_by(dead_order).to_pylist() == b_dead.sort_by(dead_order).to_pylist()
    assert a_manifest["counts"] == b_manifest["counts"]


def score_on_both(reg: dict, glob: str, workdir: Path, runner: list[str], monkeypatch,
                  extra: tuple[str, ...] = ()) -> tuple[str, str]:
    """The same relative glob scored on the local runner and on ``runner``'s flags."""
    monkeypatch.chdir(workdir)               # the glob is relative, as a user types it
    for run_id, flags in [("local", []), ("other", runner)]:
        res = score_cli(reg, [glob], "out", *flags, *extra, run_id=run_id)
        assert res.exit_code == 0, res.output
    return str(workdir / "out" / "local"), str(workdir / "out" / "other")


def bad_rows(path: Path, x: np.ndarray, y: np.ndarray) -> str:
    """Four rows as Parquet, two of them bad: one with a NaN feature, one without an id."""
    bad = np.array(x[:4], dtype=np.float64)
    bad[1, 2] = np.nan
    cols = {f"f{j}": bad[:, j] for j in range(bad.shape[1])}
    pq.write_table(pa.table({"id": ["b0", "b1", None, "b3"], **cols, "label": y[:4]}), path)
    return str(path)
