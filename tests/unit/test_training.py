"""Device plans, determinism, mixed precision, and the training math in practice."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from vigil.models.config import ModelConfig, TrainConfig
from vigil.models.devices import plan_devices
from vigil.models.preprocessing import Preprocessing
from vigil.models.splits import cross_fit_splits, split_calibration, split_indices
from vigil.models.training import effective_batch_size, fit


@pytest.mark.parametrize("device, gpus, mixed, strategy, precision", [
    ("auto", [], False, "default", "float32"),
    ("auto", ["/gpu:0"], False, "one_device", "float32"),
    ("auto", ["/gpu:0", "/gpu:1"], True, "mirrored", "mixed_float16"),
    ("cpu", ["/gpu:0", "/gpu:1"], True, "default", "mixed_bfloat16"),
    ("gpu", ["/gpu:0"], True, "one_device", "mixed_float16"),
])
def test_device_plan(device, gpus, mixed, strategy, precision):
    plan = plan_devices(device, gpus, mixed)
    assert (plan.strategy, plan.precision) == (strategy, precision)
    if strategy == "mirrored":
        assert plan.devices == tuple(gpus)


def test_gpu_requested_without_gpu_is_a_clear_error():
    with pytest.raises(RuntimeError, match="no GPU"):
        plan_devices("gpu", [], False)


def test_splits_are_disjoint_and_cover_everything():
    s = split_indices(1000, TrainConfig())
    allidx = np.concatenate(list(s.values()))
    assert len(allidx) == len(set(allidx)) == 1000
    assert effective_batch_size(680, 128) == 34 and effective_batch_size(10**6, 128) == 128
    # With a curated calibration set, training rows only train and stop training, and the
    # curated rows split in the held-out proportions (10 : 15 : 15).
    t = split_indices(1000, TrainConfig(), calibrate=False)
    assert set(t) == {"train", "validation"} and len(t["train"]) == 900
    c = split_calibration(400, TrainConfig())
    assert [len(c[k]) for k in ("holdout", "calibration_a", "calibration_b")] == [100, 150, 150]
    assert len(np.unique(np.concatenate(list(c.values())))) == 400
    with pytest.raises(ValueError, match="266 normal records.*at least 267"):
        split_calibration(266, TrainConfig())


def test_cross_fit_folds_deal_every_held_out_part_evenly():
    roles, folds = cross_fit_splits(200, TrainConfig(), 5)
    # Every row is held out once, in one part (10 : 15 : 15) and in one fold.
    assert [len(roles[k]) for k in ("validation", "calibration_a", "calibration_b")] == [50, 75, 75]
    assert sorted(np.concatenate(list(roles.values()))) == list(range(200))
    assert sorted(np.concatenate(folds)) == list(range(200))
    assert [len(f) for f in folds] == [40] * 5
    for idx in roles.values():
        shares = [len(np.intersect1d(idx, fold)) for fold in folds]
        assert max(shares) - min(shares) <= 1


def _blobs(n, seed=0):
    W = np.random.default_rng(42).normal(size=(2, 10))     # one distribution for every seed
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 2)) @ W + 0.1 * rng.normal(size=(n, 10))


def _fit(x, members=1, **train):
    cfg = ModelConfig("features", (10,), latent_dim=2, hidden=(32, 16), n_recon_samples=8,
                      n_iwae_samples=16, members=members)
    pre = Preprocessing("features", (10,), tuple(f"f{i}" for i in range(10)))
    return fit(x, cfg,
               TrainConfig(epochs=train.pop("epochs", 8), verbose=0, **train), pre)


def test_same_seed_same_model_and_scores_rank_normals_above_noise():
    x = _blobs(800)
    a, b = _fit(x, epochs=15), _fit(x, epochs=15)
    for wa, wb in zip(a.encoder.get_weights(), b.encoder.get_weights()):
        np.testing.assert_array_equal(wa, wb)
    from vigil.models.scoring import Scorer
    scorer = Scorer(a.members, ModelConfig(
        "features", (10,), latent_dim=2, hidden=(32, 16), n_recon_samples=8, n_iwae_samples=16))
    normal = a.preprocessing.transform(_blobs(300, seed=5))
    # Same marginal spread as the data, but off its 2-D manifold.
    noise = a.preprocessing.transform(x.mean(0) + x.std(0) * np.random.default_rng(6).normal(size=(300, 10)))
    s = scorer(np.concatenate([normal, noise]))
    truth = np.r_[np.zeros(300), np.ones(300)]
    assert roc_auc_score(truth, -s["vae_recon_logprob"]) > 0.95
    assert roc_auc_score(truth, s["dae_recon_error"]) > 0.95
    assert a.metrics["finite"]


def test_training_leaves_the_callers_random_streams_and_kernels_alone():
    import random

    from tensorflow.python.framework import config as tf_config
    tf_config.disable_op_determinism()
    np.random.seed(123)
    random.seed(7)
    expected = (np.random.random(3), random.random())
    np.random.seed(123)
    random.seed(7)
    _fit(_blobs(200), epochs=1)
    assert np.array_equal(np.random.random(3), expected[0]) and random.random() == expected[1]
    assert not tf_config.is_op_determinism_enabled()


def test_an_ensemble_scores_the_mean_of_its_members():
    from vigil.models.scoring import Scorer
    from vigil.schemas.tables import SCORE_NAMES
    x = _blobs(400)
    single, pair = _fit(x, epochs=3), _fit(x, members=2, epochs=3)
    # Member 0 is the single model; member 1 starts from other weights on the same split.
    for w1, w2 in zip(single.encoder.get_weights(), pair.members[0].encoder.get_weights()):
        np.testing.assert_array_equal(w1, w2)
    assert not np.array_equal(pair.members[0].dae.get_weights()[0], pair.members[1].dae.get_weights()[0])
    assert set(pair.history) == {"vae", "dae", "vae_1", "dae_1"}
    cfg = ModelConfig("features", (10,), latent_dim=2, hidden=(32, 16), n_recon_samples=8,
                      n_iwae_samples=16, members=2)
    t = pair.preprocessing.transform(_blobs(50, seed=3))
    both = Scorer(pair.members, cfg)(t)
    each = [Scorer([m], cfg)(t) for m in pair.members]
    for name in SCORE_NAMES:
        np.testing.assert_allclose(both[name], (each[0][name] + each[1][name]) / 2, rtol=1e-5)


def test_mixed_precision_trains_with_finite_losses():
    res = _fit(_blobs(300), epochs=2, mixed_precision=True)
    assert res.plan.precision == "mixed_bfloat16" and res.metrics["finite"]
    # The bundle's networks are float32 whatever the training precision.
    assert all(w.dtype == np.float32 for w in res.encoder.get_weights())


def test_spiky_features_stay_bounded_and_ordered():
    from vigil.models.preprocessing import Preprocessing
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 3))
    x[:, 1] = np.where(rng.random(500) < 0.97, 0.0, rng.exponential(50.0, 500))   # mostly 0
    pre = Preprocessing.fit_features(x, ["a", "b", "c"])
    probe = np.array([[0.0, v, 0.0] for v in (0.0, 1e3, 1e6, 1e300, np.inf)])
    z = pre.transform(probe)[:, 1]
    assert np.isfinite(z).all() and np.all(np.diff(z) >= 0)
    assert z.max() <= pre.tail + np.log1p(pre.clip)
    linear = (x - pre.center) / pre.scale
    inside = np.abs(linear) < pre.tail          # ordinary values are only centred and scaled
    assert np.allclose(pre.transform(x)[inside], linear[inside], atol=1e-5)
    round_trip = Preprocessing.from_dict(pre.to_dict())
    assert np.array_equal(round_trip.transform(probe), pre.transform(probe))


def test_a_tail_of_one_robust_unit_is_a_signed_log_that_still_grows():
    from vigil.models.preprocessing import Preprocessing
    x = np.random.default_rng(0).normal(size=(200, 2))
    pre = Preprocessing.fit_features(x, ["a", "b"], tail=1.0)
    z = np.linspace(-50, 50, 1001)
    out = pre.transform(pre.center + np.outer(z, pre.scale))[:, 0]
    outside = np.abs(z) > 1
    signed_log = np.sign(z) * (1 + np.log(np.maximum(np.abs(z), 1e-12)))
    assert np.allclose(out[outside], signed_log[outside], atol=1e-5)
    assert np.allclose(out[~outside], z[~outside], atol=1e-5)
    # A gross value is compressed, not hidden: a thousand times further is ln(1000) further.
    far = pre.transform(pre.center + np.outer([10.0, 1e4], pre.scale))[:, 0]
    assert far[1] - far[0] == pytest.approx(np.log(1e3), rel=1e-4)
    with pytest.raises(ValueError, match="feature_tail"):
        ModelConfig("features", (4,), feature_tail=0.0)


def test_label_column_is_never_a_feature_by_default(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from vigil.jobs.train import TrainJobConfig, load_training_data
    pq.write_table(pa.table({"id": ["a", "b", "c"], "x1": [1.0, 2.0, 3.0], "x2": [0, 1, 0],
                             "label": [0, 0, 1]}), tmp_path / "t.parquet")
    loaded = load_training_data(TrainJobConfig((str(tmp_path / "t.parquet"),), str(tmp_path / "r"), "m"))
    assert list(loaded[3]) == ["x1", "x2"]


def test_complexity_adjustment_and_smoothed_dae_error_are_image_options():
    assert ModelConfig("image", (8, 8, 1), adjust_complexity=True).adjust_complexity
    with pytest.raises(ValueError, match="adjust_complexity"):
        ModelConfig("features", (4,), adjust_complexity=True)
    assert ModelConfig("image", (8, 8, 1), dae_error_sigma=0.7).dae_error_sigma == 0.7
    for kind, shape, sigma in (("features", (4,), 0.7), ("image", (8, 8, 1), -1.0)):
        with pytest.raises(ValueError, match="dae_error_sigma"):
            ModelConfig(kind, shape, dae_error_sigma=sigma)


def test_image_networks_grow_with_stages_not_with_pixels():
    from vigil.models import networks
    from vigil.models.defaults import ModelOptions, default_model_config
    from vigil.models.scoring import scoring_block

    def built(shape):
        cfg = default_model_config("image", shape, ModelOptions(), 1000)
        nets = [networks.build_encoder(cfg), networks.build_decoder(cfg), networks.build_dae(cfg)]
        assert nets[1].output_shape[1:] == shape and nets[2].output_shape[1:] == shape
        return cfg, sum(n.count_params() for n in nets)

    mnist, mnist_params = built((28, 28, 1))
    assert mnist.hidden == (32, 64) and scoring_block(mnist) == 64     # the benchmarked model
    photo, photo_params = built((128, 128, 3))
    assert photo.hidden == (32, 64, 128, 128) and scoring_block(photo) == 5
    large, large_params = built((300, 200, 3))                        # cropped on both axes
    assert len(large.hidden) == 6 and scoring_block(large) == 1
    # Four times the pixels of a 128x128 image and more: weights grow by one stage's
    # convolutions (~0.3M), never with the pixels feeding a dense layer.
    assert large_params - photo_params < 1_000_000
    assert photo_params < 20_000_000 and mnist_params < 4_000_000


def test_example_budget_caps_epochs_but_leaves_warm_up_room():
    from vigil.models.training import epoch_count
    assert epoch_count(3250, TrainConfig(max_examples=130_000)) == 40
    assert epoch_count(500, TrainConfig(max_examples=130_000)) == 60       # small: all epochs
    assert epoch_count(10**6, TrainConfig(max_examples=130_000)) == 10     # huge: the floor
    assert epoch_count(10**6, TrainConfig(max_examples=0)) == 60           # 0 = no cap
    with pytest.raises(ValueError, match="--max-examples -1: must be >= 0"):
        TrainConfig(max_examples=-1)


def test_cross_fitted_members_are_calibrated_on_the_rows_they_did_not_see():
    from vigil.models.calibration import oriented
    from vigil.models.scoring import Scorer
    x = _blobs(120)
    cfg = ModelConfig("features", (10,), latent_dim=2, hidden=(), n_recon_samples=8,
                      n_iwae_samples=16, members=3, cross_fit=True)
    pre = Preprocessing("features", (10,), tuple(f"f{i}" for i in range(10)))
    result = fit(x, cfg, TrainConfig(epochs=3, verbose=0), pre)
    assert result.split_sizes["folds"] == 3 and result.split_sizes["train"] == 80
    # Split A's calibration values are each row's score from the one member whose fold
    # held it, not the ensemble's.
    roles, folds = cross_fit_splits(len(x), TrainConfig(), 3)
    t = result.preprocessing.transform(x)
    own = np.concatenate([Scorer([member], cfg)(t[rows])["vae_elbo"]
                          for member, fold in zip(result.members, folds)
                          for rows in [np.intersect1d(roles["calibration_a"], fold)]])
    np.testing.assert_allclose(result.calibration.scores["vae_elbo"],
                               np.sort(oriented("vae_elbo", own)), rtol=1e-6)
    rows = roles["calibration_a"]
    everyone = Scorer(result.members, cfg)(t[rows])
    assert not np.allclose(np.sort(oriented("vae_elbo", everyone["vae_elbo"])),
                           result.calibration.scores["vae_elbo"])
    with pytest.raises(ValueError, match="cross_fit=True with members=1"):
        ModelConfig("features", (10,), cross_fit=True)
