"""Builders of real input files for tests, and the run invariant check."""
from __future__ import annotations

import gzip
import io
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def mnist(n: int, offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images (n, 28, 28), labels) from the shared MNIST test set."""
    def read(name):
        with gzip.open(SHARED / "mnist" / name, "rb") as f:
            data = f.read()
        ndim = data[3]
        dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
        return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)
    return read("t10k-images-idx3-ubyte.gz")[offset:offset + n], \
        read("t10k-labels-idx1-ubyte.gz")[offset:offset + n]


def adbench(name: str = "6_cardio") -> tuple[np.ndarray, np.ndarray]:
    d = np.load(SHARED / "adbench" / f"{name}.npz", allow_pickle=False)
    return np.asarray(d["X"], np.float64), np.asarray(d["y"]).astype(int)


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


def read_run(run_dir: str) -> tuple[pa.Table, pa.Table, dict]:
    scores = ds.dataset(f"{run_dir}/scores", format="parquet").to_table()
    dead = ds.dataset(f"{run_dir}/dead_letter", format="parquet").to_table()
    manifest = json.loads(Path(run_dir, "manifest.json").read_text())
    return scores, dead, manifest


def count_input_records(paths: list[str]) -> int:
    """Records in input files, counted by an independent scan (not by the pipeline)."""
    import tensorflow as tf
    total = 0
    for p in paths:
        if p.endswith(".parquet"):
            try:
                total += pq.ParquetFile(p).metadata.num_rows
            except Exception:  # unreadable: the run has one file-level dead letter for it
                total += 1
        elif p.endswith(".tfrecord"):
            n = 0
            try:
                for _ in tf.data.TFRecordDataset(p):
                    n += 1
                total += n
            except tf.errors.DataLossError:
                total += n + 1     # the good prefix plus one file-level dead letter
        else:
            total += 1
    return total


def check_invariant(run_dir: str, inputs: list[str]) -> None:
    """input records == scored + dead-lettered, and every scored id appears once."""
    scores, dead, manifest = read_run(run_dir)
    assert Path(run_dir, "_SUCCESS").exists()
    expected = count_input_records(inputs)
    assert scores.num_rows + dead.num_rows == expected, (scores.num_rows, dead.num_rows, expected)
    c = manifest["counts"]
    assert c["read"] == c["scored"] + c["dead_lettered"] == expected
    assert c["scored"] == scores.num_rows and c["dead_lettered"] == dead.num_rows
