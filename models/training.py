"""Fit both models on normal data, then calibrate them on held-out normal data.

The normal rows are split once, by seed, into four disjoint parts:

    train          fits the weights
    validation     early stopping, and the promotion gates (FPR on unseen normals)
    calibration A  per-score conformal p-values and thresholds
    calibration B  the combined statistic's own threshold

so no number in the manifest is measured on data the models were fitted to.  When the
caller brings a curated set of normal records (``calibration_set``), the training records
split into train and validation only, and the curated set into

    holdout        the promotion gates
    calibration A, calibration B   as above

so thresholds and gates come from data known to be normal while the weights learn from a
larger set that may hold anomalies (a trimmed likelihood copes with those; a conformal
quantile does not).  An ensemble
(``ModelConfig.members``) trains each member on the same train split from its own initial
weights (seed ``cfg.seed + m``) and is calibrated as one model.

A cross-fitted ensemble (``ModelConfig.cross_fit``, for tables too small to spare 40% of
their rows) deals every row into one of the three held-out parts and into one of
``members`` folds instead: member ``k`` trains on the rows outside fold ``k`` and stops
early on fold ``k``'s validation rows, and each held-out row is scored by the member of
its fold alone.  Every row then trains all but one member and calibrates the one that
never saw it.
"""
from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf
import tf_keras as keras

from vigil.models.calibration import Calibration
from vigil.models.complexity import INPUT_BITS, input_bits
from vigil.models.config import DAE_SMOOTH_ERROR, DataError, ModelConfig, TrainConfig
from vigil.models.dae import DAE, TrimAfter
from vigil.models.devices import DevicePlan, make_strategy, plan_devices, precision_policy, visible_gpus
from vigil.models.networks import build_dae, build_decoder, build_encoder
from vigil.models.preprocessing import Preprocessing
from vigil.models.scoring import Member, Scorer
from vigil.models.splits import cross_fit_splits, split_calibration, split_indices
from vigil.models.vae import VAE, KLWarmup
from vigil.schemas.tables import SCORE_NAMES

LOG = logging.getLogger("vigil.train")
# Train steps per call of the compiled train function.  A table's step is about a
# millisecond of small kernels, and one call per step spent a third of that in Python and
# dispatch; epoch-level callbacks (warm-up, early stopping, logs) see no difference.
STEPS_PER_EXECUTION = 32


@dataclass
class TrainResult:
    """What ``fit`` returns: the members, the fitted preprocessing, the calibration, history, metrics and
    the held-out records."""
    members: list[Member]
    preprocessing: Preprocessing
    calibration: Calibration
    history: dict
    metrics: dict
    plan: DevicePlan
    split_sizes: dict
    validation_scores: dict = field(repr=False, default_factory=dict)
    # The held-out normal records behind metrics["validation"] (the promotion gates), raw.
    holdout: np.ndarray = field(repr=False, default_factory=lambda: np.empty(0))

    # The first member stands for the ensemble in pictures (latent map, samples).
    @property
    def encoder(self) -> keras.Model:
        """The first member's encoder, which stands for the ensemble in the report's pictures."""
        return self.members[0].encoder

    @property
    def decoder(self) -> keras.Model:
        """The first member's decoder, which stands for the ensemble in the report's pictures."""
        return self.members[0].decoder


def effective_batch_size(n_train: int, batch_size: int, min_steps: int = 20) -> int:
    """At most ``batch_size``, but small enough for ``min_steps`` steps per epoch.

    On small data sets a large batch leaves a handful of gradient steps per epoch and the
    VAE collapses to the prior (KL ~ 0) before early stopping ends training.
    """
    return int(max(8, min(batch_size, n_train // min_steps)))


def epoch_count(n_train: int, cfg: TrainConfig, min_epochs: int = 10) -> int:
    """``cfg.epochs``, capped so each model sees about ``cfg.max_examples`` examples.

    Early stopping rarely ends image training (validation loss creeps down for all 60
    epochs) while each conv epoch costs seconds per thousand images, so large image sets
    get a budget in examples instead; the floor leaves the KL warm-up room to finish.
    """
    if not cfg.max_examples:
        return cfg.epochs
    return int(min(cfg.epochs, max(min_epochs, math.ceil(cfg.max_examples / max(n_train, 1)))))


def data_profile(x_raw: np.ndarray, kind: str, feature_columns: list[str]) -> dict:
    """What normal input looked like; input expectations are derived from it."""
    if kind == "image":
        return {"kind": "image", "shape": list(x_raw.shape[1:]), "rows": int(len(x_raw)),
                "pixel_mean": float(np.mean(x_raw)), "pixel_std": float(np.std(x_raw))}
    cols = {}
    for j, name in enumerate(feature_columns):
        v = x_raw[:, j]
        cols[name] = {"min": float(np.min(v)), "max": float(np.max(v)),
                      "mean": float(np.mean(v)), "std": float(np.std(v)),
                      "q01": float(np.quantile(v, 0.01)), "q99": float(np.quantile(v, 0.99))}
    return {"kind": "features", "rows": int(len(x_raw)), "columns": cols}


def _float32_copy(model: keras.Model, build, config: ModelConfig) -> keras.Model:
    """The same weights in a float32 network: bundles never depend on the training precision."""
    copy = build(config)
    copy.set_weights(model.get_weights())
    return copy


def _dataset(x: np.ndarray, batch: int, seed: int, shuffle: bool) -> tf.data.Dataset:
    ds = tf.data.Dataset.from_tensor_slices(x)
    if shuffle:
        ds = ds.shuffle(min(len(x), 100_000), seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch).prefetch(tf.data.AUTOTUNE)


class EpochLog(keras.callbacks.Callback):
    """One labelled line per epoch on the ``vigil.train`` log, instead of Keras' own bars:
    which network of which member, its losses, and the time left at most (early stopping
    may end sooner)."""

    def __init__(self, label: str, epochs: int):
        super().__init__()
        self.label, self.epochs = label, epochs

    def on_train_begin(self, logs=None):
        """Start the clock for the epoch lines."""
        self.started = time.time()

    def on_epoch_end(self, epoch, logs=None):
        """Log one line: the epoch, its losses and the time taken."""
        logs = logs or {}
        elapsed = time.time() - self.started
        left = elapsed / (epoch + 1) * (self.epochs - epoch - 1)
        val = f", val_loss {logs['val_loss']:.4g}" if "val_loss" in logs else ""
        LOG.info("%s epoch %d/%d: loss %.4g%s (%.0f s, at most %.0f s left)", self.label,
                 epoch + 1, self.epochs, logs.get("loss", float("nan")), val, elapsed, left)


def _fit_one(model, x_train, x_val, cfg: TrainConfig, global_batch: int, callbacks, start_from: int,
             label: str = ""):
    monitor = "val_loss" if len(x_val) else "loss"
    stop = keras.callbacks.EarlyStopping(monitor=monitor, patience=cfg.patience,
                                         restore_best_weights=True, start_from_epoch=start_from)
    validation = _dataset(x_val, global_batch, cfg.seed, False) if len(x_val) else None
    epochs = epoch_count(len(x_train), cfg)
    progress = [EpochLog(label, epochs)] if cfg.verbose else []
    history = model.fit(_dataset(x_train, global_batch, cfg.seed, True), validation_data=validation,
                        epochs=epochs, callbacks=[*callbacks, stop, *progress], verbose=0)
    return {k: [float(v) for v in vals] for k, vals in history.history.items()}


def _fit_member(part: dict[str, np.ndarray], model_config: ModelConfig, cfg: TrainConfig,
                index: int, strategy, plan: DevicePlan, global_batch: int) -> tuple[Member, dict]:
    """Train one VAE and one DAE from the initial weights of seed ``cfg.seed + index``."""
    keras.utils.set_random_seed(cfg.seed + index)
    with strategy.scope(), precision_policy(plan.precision):
        vae, dae = VAE(model_config), DAE(model_config)
        for model in (vae, dae):
            model.compile(optimizer=keras.optimizers.Adam(cfg.learning_rate),
                          steps_per_execution=STEPS_PER_EXECUTION)
    warmup = model_config.kl_warmup_epochs
    who = f"member {index + 1}/{model_config.members}"
    history = {
        "vae": _fit_one(vae, part["train"], part["validation"], cfg, global_batch, [KLWarmup()],
                        warmup, f"{who} VAE"),
        "dae": _fit_one(dae, part["train"], part["validation"], cfg, global_batch, [TrimAfter(warmup)],
                        warmup, f"{who} DAE"),
    }
    member = Member(_float32_copy(vae.encoder, build_encoder, model_config),
                    _float32_copy(vae.decoder, build_decoder, model_config),
                    _float32_copy(dae.net, build_dae, model_config))
    return member, history


def fit(x_raw: np.ndarray, model_config: ModelConfig, cfg: TrainConfig,
        preprocessing: Preprocessing, calibration_set: np.ndarray | None = None) -> TrainResult:
    """Train the VAE and the DAE on normal records and calibrate them.

    ``x_raw`` is decoded records (uint8 images or raw features), ``preprocessing`` the
    transform to model inputs (for features it is re-fitted here on the train split).
    ``calibration_set``, decoded records known to be normal, supplies the
    thresholds and the gates instead of held-out training records.
    """
    with _reproducible():
        return _fit(x_raw, model_config, cfg, preprocessing, calibration_set)


@contextlib.contextmanager
def _reproducible():
    """Deterministic kernels while training; the caller's kernel setting and Python's and
    NumPy's global generators back afterwards.

    Each member seeds the global generators (``keras.utils.set_random_seed``) so that the
    same data and seed give the same weights.  A notebook that fits a model keeps its own
    random streams and kernels; TensorFlow's global seed stays the last member's, as
    TensorFlow has no way to read the previous one back.
    """
    # TensorFlow exports enabling determinism, not reading or undoing it.
    from tensorflow.python.framework import config as tf_config
    was_deterministic = tf_config.is_op_determinism_enabled()
    python_state, numpy_state = random.getstate(), np.random.get_state()
    tf.config.experimental.enable_op_determinism()
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        if not was_deterministic:
            tf_config.disable_op_determinism()


def _fit(x_raw: np.ndarray, model_config: ModelConfig, cfg: TrainConfig,
         preprocessing: Preprocessing, calibration_set: np.ndarray | None) -> TrainResult:
    n = len(x_raw)
    cross_fit = model_config.cross_fit and calibration_set is None
    if cross_fit:
        splits, folds = cross_fit_splits(n, cfg, model_config.members)
        # No row is outside every member's training data: the robust scaling (a median
        # and quartiles per feature) is fitted on all of them.
        trains = [np.setdiff1d(np.arange(n), fold) for fold in folds]
        splits["train"] = np.arange(n)
    else:
        splits = split_indices(n, cfg, calibrate=calibration_set is None)
        folds, trains = [], [splits["train"]] * model_config.members
    if preprocessing.kind == "features":
        preprocessing = Preprocessing.fit_features(x_raw[splits["train"]],
                                                   list(preprocessing.feature_columns),
                                                   tail=model_config.feature_tail)
    x = preprocessing.transform(x_raw)
    part = {name: x[idx] for name, idx in splits.items()}
    # Held-out normal records as (model inputs, raw records), per split.
    if calibration_set is None:
        held = {name: (part[name], x_raw[splits[name]])
                for name in ("validation", "calibration_a", "calibration_b")}
        gate = "validation"
    else:
        cx = calibration_set
        if tuple(cx.shape[1:]) != tuple(x_raw.shape[1:]):
            raise DataError(f"calibration records have shape {tuple(cx.shape[1:])}, "
                             f"training records {tuple(x_raw.shape[1:])}")
        cx_model = preprocessing.transform(cx)
        held = {name: (cx_model[idx], cx[idx])
                for name, idx in split_calibration(len(cx), cfg).items()}
        gate = "holdout"

    plan = plan_devices(cfg.device, visible_gpus(), cfg.mixed_precision)
    strategy = make_strategy(plan)
    global_batch = effective_batch_size(len(trains[0]), cfg.batch_size) \
        * strategy.num_replicas_in_sync
    started = time.time()
    members, history = [], {}
    for m in range(model_config.members):
        own = {"train": x[trains[m]],
               "validation": x[np.intersect1d(splits["validation"], folds[m])] if cross_fit
               else part["validation"]}
        member, member_history = _fit_member(own, model_config, cfg, m, strategy, plan, global_batch)
        members.append(member)
        history.update({(name if m == 0 else f"{name}_{m}"): h for name, h in member_history.items()})

    if cross_fit:
        scores = _out_of_fold_scores(members, folds, {name: splits[name] for name in held},
                                     x, model_config, cfg.seed)
    else:
        scorer = Scorer(members, model_config, seed=cfg.seed)
        scores = {name: scorer.score_array(inputs) for name, (inputs, _) in held.items()}
    for name, (_, rows) in held.items():
        if model_config.adjust_complexity:
            scores[name][INPUT_BITS] = input_bits(rows)
    if len(held["calibration_a"][1]) == 0 or len(held["calibration_b"][1]) == 0:
        raise DataError(f"only {len(x_raw)} normal records: calibration splits are empty")
    calibration = Calibration.fit(scores["calibration_a"], scores["calibration_b"], cfg.target_fprs,
                                  combine=combined_statistics(model_config), rule=model_config.combine,
                                  adjust_complexity=model_config.adjust_complexity,
                                  image_shape=model_config.input_shape)
    metrics = {
        "train_seconds": round(time.time() - started, 2),
        "final": {m: {k: v[-1] for k, v in h.items()} for m, h in history.items()},
        "finite": all(math.isfinite(v[-1]) for h in history.values() for v in h.values()),
        "validation": validation_metrics(calibration, scores[gate]),
    }
    metrics["batch_size"] = global_batch
    sizes = {k: int(len(v)) for k, v in splits.items()}
    if cross_fit:
        sizes.update(train=int(len(trains[0])), folds=len(folds))
    if calibration_set is not None:
        sizes.update({f"calibration_input_{k}": int(len(v[1])) for k, v in held.items()})
    return TrainResult(members, preprocessing, calibration, history, metrics,
                       plan, sizes, scores[gate], held[gate][1])


def _out_of_fold_scores(members: list[Member], folds: list[np.ndarray],
                        parts: dict[str, np.ndarray], x: np.ndarray,
                        model_config: ModelConfig, seed: int) -> dict[str, dict[str, np.ndarray]]:
    """Scores of each part's rows (sorted indices into ``x``), by the member held from them.

    A record's score from the whole ensemble is a mean over members; from one member it
    varies a little more, so thresholds taken from these err towards flagging less.
    """
    out: dict[str, dict[str, np.ndarray]] = {name: {} for name in parts}
    for member, fold in zip(members, folds):
        mine = {name: np.flatnonzero(np.isin(rows, fold)) for name, rows in parts.items()}
        rows = np.concatenate([parts[name][i] for name, i in mine.items()])
        if not len(rows):
            continue
        scored = Scorer([member], model_config, seed=seed).score_array(x[rows])
        start = 0
        for name, i in mine.items():
            for key, values in scored.items():
                out[name].setdefault(key, np.empty((len(parts[name]), *values.shape[1:]),
                                                   values.dtype))[i] = values[start:start + len(i)]
            start += len(i)
    return out


def combined_statistics(model_config: ModelConfig) -> tuple[str, ...]:
    """The statistics ``anomaly_score`` pools: the four scores, with the DAE's smoothed
    error in place of its plain one when the model has a ``dae_error_sigma``, and only the
    DAE's under the ``dae`` rule."""
    dae = DAE_SMOOTH_ERROR if model_config.dae_error_sigma else "dae_recon_error"
    if model_config.combine == "dae":
        return (dae,)
    return (*(n for n in SCORE_NAMES if n.startswith("vae_")), dae)


def validation_metrics(calibration: Calibration, scores: dict[str, np.ndarray]) -> dict:
    """False-positive rate of ``is_anomaly`` at each target on held-out normal rows."""
    n = len(next(iter(scores.values()), []))
    if n == 0:
        return {"rows": 0}
    combined = calibration.anomaly_score(scores)
    out = {"rows": int(n), "mean": {s: float(np.mean(scores[s])) for s in SCORE_NAMES}, "fpr": {}}
    for alpha in calibration.target_fprs:
        out["fpr"][str(alpha)] = float(np.mean(combined > calibration.threshold(alpha)))
    return out
