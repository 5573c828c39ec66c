"""Session fixtures: tiny but real trained model versions (features and images)."""
from __future__ import annotations

import os

import pytest

from tests import helpers
from vigil.models.runtime import apply_scoring_env

# The suite is an entry point: TensorFlow's settings as the CLI makes them, before TF loads.
apply_scoring_env()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

RUNNER = ["--runner=FnApiRunner"]


@pytest.fixture(scope="session")
def features_registry(tmp_path_factory):
    """A dense model trained on the normal rows of ADBench cardio, as Parquet shards."""
    from vigil.jobs.train import TrainJobConfig, run_training
    from vigil.models.config import TrainConfig
    root = tmp_path_factory.mktemp("features")
    x, y = helpers.cardio()
    paths = helpers.table_shards(root / "train", x[y == 0][:900], y[y == 0][:900])
    registry = str(root / "registry")
    out = run_training(TrainJobConfig(
        (str(root / "train" / "*.parquet"),), registry, "cardio", label_column="label",
        normal_values=("0",), train=TrainConfig(epochs=4, verbose=0)))
    assert out.promoted, out.gate_failures
    return {"registry": registry, "name": "cardio", "x": x, "y": y, "root": root,
            "columns": [f"f{j}" for j in range(x.shape[1])], "train_paths": paths}


@pytest.fixture(scope="session")
def images_registry(tmp_path_factory):
    """A conv model trained on 600 MNIST digits (not 7), as PNG TFRecord shards."""
    from vigil.jobs.train import TrainJobConfig, run_training
    from vigil.models.config import TrainConfig
    root = tmp_path_factory.mktemp("images")
    images, labels = helpers.mnist(900)
    keep = labels != 7
    helpers.image_shards(root / "train", images[keep][:600], labels[keep][:600])
    registry = str(root / "registry")
    out = run_training(TrainJobConfig(
        (str(root / "train" / "*.tfrecord"),), registry, "mnist",
        train=TrainConfig(epochs=3, verbose=0)))
    assert out.version == "0001"
    if not out.promoted:     # 3 epochs may miss a gate; the pipeline tests need production
        from vigil.models import registry as reg
        reg.promote(registry, "mnist", out.version)
    return {"registry": registry, "name": "mnist", "root": root, "version": out.version}
