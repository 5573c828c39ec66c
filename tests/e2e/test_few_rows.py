"""`vigil train` on a table with fewer training rows than features (few-shot embeddings)."""
from __future__ import annotations

import numpy as np
from click.testing import CliRunner
from sklearn.metrics import roc_auc_score

from tests import helpers
from vigil.jobs.cli import cli
from vigil.models import registry
from vigil.models.defaults import ModelOptions, default_model_config


def test_the_table_defaults_turn_linear_and_untrimmed_below_one_row_per_feature():
    few, many = (default_model_config("features", (512,), ModelOptions(), rows) for rows in (511, 512))
    assert (few.hidden, few.trim_fraction, few.min_scale, few.feature_tail) == ((), 0.0, 0.3, 1.0)
    assert (few.members, few.cross_fit) == (5, True)
    assert (many.hidden, many.trim_fraction, many.min_scale, many.feature_tail) == \
        ((128, 64), 0.4, 0.03, 20.0)
    assert (many.members, many.cross_fit) == (3, False)
    # One member asked for: nothing to cross-fit.
    one = default_model_config("features", (512,), ModelOptions(members=1), 100)
    assert (one.members, one.cross_fit) == (1, False)


def test_few_shot_embeddings_train_linear_models_that_find_the_defects(tmp_path):
    x, y = helpers.few_shot_embeddings(n_normal=220, n_defect=60)
    rng = np.random.default_rng(0)
    normal = rng.permutation(np.flatnonzero(y == 0))
    train, test = normal[:150], np.r_[normal[150:], np.flatnonzero(y == 1)]
    helpers.table_shards(tmp_path / "train", x[train], prefix="train")
    result = CliRunner().invoke(cli, [
        "train", "--input", str(tmp_path / "train" / "*.parquet"), "--registry",
        str(tmp_path / "reg"), "--name", "embeddings", "--no-promote"])
    assert result.exit_code in (0, 5), result.output
    bundle = registry.load(str(tmp_path / "reg"), "embeddings", "0001")
    config = bundle.manifest["model_config"]
    # Five cross-fitted members, each trained on four fifths of the 150 rows.
    sizes = bundle.manifest["training"]["split_sizes"]
    assert (config["members"], config["cross_fit"], sizes["folds"], sizes["train"]) == (5, True, 5, 120)
    assert len(bundle.members) == 5
    assert (config["hidden"], config["trim_fraction"], config["min_scale"]) == ([], 0.0, 0.3)
    # Inputs past one robust unit are on a log scale, and scoring applies the same.
    assert config["feature_tail"] == bundle.manifest["preprocessing"]["tail"] == 1.0
    # Linear networks: the encoder maps x to its posterior with one dense layer per output.
    assert [type(layer).__name__ for layer in bundle.members[0].encoder.layers] == \
        ["InputLayer", "Dense", "Dense"]
    scores = bundle.score_raw(bundle.scorer(), x[test])
    assert roc_auc_score(y[test], bundle.calibration.anomaly_score(scores)) > 0.9
