"""``vigil demo``: the whole loop on real data that ships inside scikit-learn.

images:   sklearn's 1,797 handwritten 8x8 digits, written as PNG-in-TFRecord shards (the
          format a user would have). Digits in HELD_OUT never reach training; they are
          the anomalies among the scored records.
features: sklearn's breast-cancer table (569 rows, 30 features) as Parquet shards;
          benign rows train the model, malignant rows are the anomalies.
"""
from __future__ import annotations

import io
import logging
import os
import shutil

import numpy as np

HELD_OUT = (7,)
SHARDS = 3
# The demo's normal data is small: 1,133 images leave 170 rows to set the threshold of
# anomaly_score, and at 0.01 a conformal threshold cannot sit below the largest of 170
# normal values, so hardly anything is flagged.  At 0.05 it is the 8th largest.
TARGET_FPR = 0.05
LOG = logging.getLogger("vigil.demo")


def _split(n: int, seed: int = 0, test_frac: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng(seed).permutation(n)
    cut = int(n * test_frac)
    return np.sort(perm[cut:]), np.sort(perm[:cut])


def write_image_shards(directory: str, images: np.ndarray, labels: np.ndarray, ids: list[str]) -> None:
    """uint8 (n, H, W) images -> SHARDS TFRecord files of tf.Example with PNG bytes."""
    import tensorflow as tf
    from PIL import Image
    os.makedirs(directory, exist_ok=True)
    for shard in range(SHARDS):
        path = f"{directory}/part-{shard:05d}-of-{SHARDS:05d}.tfrecord"
        with tf.io.TFRecordWriter(path) as writer:
            for i in range(shard, len(images), SHARDS):
                buf = io.BytesIO()
                Image.fromarray(images[i], "L").save(buf, format="PNG")
                example = tf.train.Example(features=tf.train.Features(feature={
                    "id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[ids[i].encode()])),
                    "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[buf.getvalue()])),
                    "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(labels[i])])),
                }))
                writer.write(example.SerializeToString())


def write_table_shards(directory: str, x: np.ndarray, columns: list[str], labels: np.ndarray,
                       ids: list[str]) -> None:
    """Write rows as Parquet shards with ``id``, the feature columns and ``label`` (the demo's input)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    os.makedirs(directory, exist_ok=True)
    for shard in range(SHARDS):
        rows = np.arange(shard, len(x), SHARDS)
        table = pa.table({"id": [ids[i] for i in rows],
                          **{c: x[rows, j] for j, c in enumerate(columns)},
                          "label": labels[rows].astype(np.int64)})
        pq.write_table(table, f"{directory}/part-{shard:05d}.parquet")


def prepare(output: str, kind: str) -> tuple[str, str, str, list[str]]:
    """Write the demo's train and score shards; returns (train glob, score glob, normal labels)."""
    from sklearn import datasets
    data_dir = f"{output}/data"
    if os.path.isdir(data_dir):
        shutil.rmtree(data_dir)
    if kind == "images":
        digits = datasets.load_digits()
        images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
        labels = digits.target
        ids = [f"digit-{i:04d}" for i in range(len(images))]
        normal = np.flatnonzero(~np.isin(labels, HELD_OUT))
        train, test = _split(len(normal))
        score_idx = np.sort(np.concatenate([normal[test], np.flatnonzero(np.isin(labels, HELD_OUT))]))
        write_image_shards(f"{data_dir}/train", images[normal[train]], labels[normal[train]],
                           [ids[i] for i in normal[train]])
        write_image_shards(f"{data_dir}/score", images[score_idx], labels[score_idx],
                           [ids[i] for i in score_idx])
        normal_values = [str(d) for d in range(10) if d not in HELD_OUT]
        return f"{data_dir}/train/*.tfrecord", f"{data_dir}/score/*.tfrecord", "label", normal_values
    table = datasets.load_breast_cancer()
    x, labels = table.data, (table.target == 0).astype(np.int64)    # 0 = malignant -> anomaly
    columns = [c.replace(" ", "_") for c in table.feature_names]
    ids = [f"patient-{i:04d}" for i in range(len(x))]
    normal = np.flatnonzero(labels == 0)
    train, test = _split(len(normal))
    score_idx = np.sort(np.concatenate([normal[test], np.flatnonzero(labels == 1)]))
    write_table_shards(f"{data_dir}/train", x[normal[train]], columns, labels[normal[train]],
                       [ids[i] for i in normal[train]])
    write_table_shards(f"{data_dir}/score", x[score_idx], columns, labels[score_idx],
                       [ids[i] for i in score_idx])
    return f"{data_dir}/train/*.parquet", f"{data_dir}/score/*.parquet", "label", ["0"]


def run_demo(output: str, kind: str = "images", epochs: int = 40, overrides: dict | None = None,
             target_fpr: float = TARGET_FPR):
    """Prepare data, train, score; yields the summary lines."""
    import pyarrow.dataset as ds
    from sklearn.metrics import roc_auc_score

    from vigil.jobs.train import TrainJobConfig, run_training
    from vigil.models.config import TrainConfig
    from vigil.pipeline.config import ScoreConfig
    from vigil.pipeline.options import pipeline_options
    from vigil.pipeline.run import plan_run, score
    from vigil.schemas.tables import SCORE_NAMES, SCORE_ORIENTATION

    output = os.path.abspath(output)
    train_glob, score_glob, label_column, normal_values = prepare(output, kind)
    registry = f"{output}/registry"
    if os.path.isdir(registry):
        shutil.rmtree(registry)
    name = f"demo-{kind}"
    overrides = overrides or {}
    LOG.info("training %s on %s", name, train_glob)
    trained = run_training(TrainJobConfig(
        (train_glob,), registry, name, label_column=label_column,
        normal_values=tuple(normal_values),
        train=TrainConfig(epochs=epochs, verbose=0, target_fprs=(target_fpr,),
                          **overrides.get("train", {}))))
    cfg = ScoreConfig(inputs=(score_glob,), registry=registry, name=name, output=f"{output}/runs",
                      model_version=trained.version, run_id="demo", overwrite=True)
    result = score(plan_run(cfg), pipeline_options(cfg, overrides.get("beam_args", [])))
    table = ds.dataset(f"{result.run_dir}/scores", format="parquet").to_table()
    labels = np.array(table.column("label").to_pylist())
    truth = (np.isin(labels, HELD_OUT) if kind == "images" else labels == 1).astype(int)
    counts = result.manifest["counts"]
    yield f"vigil demo ({kind}): model {name} version {trained.version}" + \
        (" (promoted)" if trained.promoted else f" (not promoted: {'; '.join(trained.gate_failures)})")
    yield f"  scores:      {result.run_dir}/scores/ (Parquet)"
    yield (f"  records:     read {counts['read']}, scored {counts['scored']}, "
           f"dead-lettered {counts['dead_lettered']}")
    flags = np.array(table.column("is_anomaly").to_pylist())
    yield (f"  anomalies:   {counts['anomalies']} flagged at target FPR {target_fpr}: "
           f"{int(flags[truth == 1].sum())} of {int(truth.sum())} anomalies caught, "
           f"false-positive rate on held-out normals {flags[truth == 0].mean():.3f}")
    what = f"digit {', '.join(map(str, HELD_OUT))} held out of training" if kind == "images" \
        else "malignant rows"
    yield f"  AUROC against {what} ({int(truth.sum())} anomalies, {int((1 - truth).sum())} normals):"
    aurocs = {}
    for col in (*SCORE_NAMES, "anomaly_score"):
        sign = SCORE_ORIENTATION.get(col, 1)
        aurocs[col] = roc_auc_score(truth, sign * np.array(table.column(col).to_pylist()))
        yield f"    {col:<20} {aurocs[col]:.3f}"
    yield f"  best score:  {max(aurocs, key=aurocs.get)} ({max(aurocs.values()):.3f})"
    from vigil.pipeline.report.run_report import build_run_report
    checks = build_run_report(result.run_dir).checks
    yield (f"  report:      {result.run_dir}/report/index.html "
           f"({sum(c.success for c in checks)} of {len(checks)} data-quality checks passed)")
    # The demo's scored data is a quarter (images) to two thirds (features) anomalies, so
    # rate and range checks fire; name them, one line per kind of check.
    failed: dict[str, list] = {}
    for c in checks:
        if not c.success:
            failed.setdefault(c.why, []).append(c)
    for why, cs in failed.items():
        what = ", ".join(c.column for c in cs[:4]) + (f" and {len(cs) - 4} more" if len(cs) > 4 else "")
        seen = f"; observed {str(cs[0].observed).removeprefix('value: ')}" if len(cs) == 1 else ""
        yield f"    failed:    {why} ({what}{seen})"
    yield f"  model:       {registry}/{name}/versions/{trained.version}/report.html"
