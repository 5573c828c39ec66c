"""vigil's models as an estimator: fit on arrays or DataFrames, score, save, load.

``Detector`` is what ``vigil train`` and ``vigil score`` run underneath, without Beam: the
same default networks (``vigil.models.defaults``), the same training and calibration
(``vigil.models.training``), the same registry and promotion gates
(``vigil.models.publishing``), and scores with exactly the columns and meaning of the
scores table a run writes.

TensorFlow settings are the caller's: scores are bit-identical to ``vigil score``'s on the
same machine unless ``TF_ENABLE_ONEDNN_OPTS=0`` was set before TensorFlow loaded.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from vigil.models import registry
from vigil.models.bundle import Bundle
from vigil.models.calibration import default_target_fpr
from vigil.models.config import IMAGE_MAX_EXAMPLES, ConfigError, DataError, TrainConfig
from vigil.models.defaults import ModelOptions, default_model_config
from vigil.models.preprocessing import Preprocessing
from vigil.models.publishing import GatePolicy, Published, build_manifest, gates, publish_version
from vigil.models.splits import train_split_size
from vigil.models.training import data_profile, fit
from vigil.schemas.features import column_name, element_names, source
from vigil.schemas.tables import SCORE_NAMES, top_features

KINDS = ("features", "image")
MEMORY_SOURCE = "memory"     # the scores table's ``source`` of records given as arrays


class Detector:
    """Anomaly detector: a VAE (reconstruction probability, ELBO, IWAE log p(x)) and a
    denoising autoencoder, calibrated on held-out normal records.

    Args:
      kind: "features" (a 2-D array or DataFrame of numbers) or "image" (uint8 arrays
        of shape (N, H, W) or (N, H, W, C)); None: from the data given to ``fit``.
      latent_dim, likelihood, members: the networks (None: the kind's default).
      epochs, max_examples, batch_size, seed, device, mixed_precision, verbose: training,
        as ``vigil train``'s options of the same names.

    Example:
        >>> det = Detector(epochs=5).fit(normal_rows, target_fpr=0.01)
        >>> scores = det.score(new_rows)            # a DataFrame, one row per record
        >>> det.save("./registry", "sensors")       # a version, gated like vigil train's
    """

    def __init__(self, kind: str | None = None, *, latent_dim: int | None = None,
                 likelihood: str | None = None, members: int | None = None, epochs: int = 60,
                 max_examples: int | None = None, batch_size: int = 128, seed: int = 0,
                 device: str = "auto", mixed_precision: bool = False, verbose: int = 0):
        if kind not in (None, *KINDS):
            raise ConfigError(f"kind={kind!r}: expected 'features' or 'image'")
        self.kind = kind
        self.model_options = ModelOptions(latent_dim, likelihood, members)
        self.training = dict(epochs=epochs, max_examples=max_examples, batch_size=batch_size, seed=seed,
                             device=device, mixed_precision=mixed_precision, verbose=verbose)
        TrainConfig(**self.training)              # a bad value fails here, not after loading data
        self.bundle_: Bundle | None = None
        self._fitted: dict[str, Any] = {}
        self._scorer = None

    # -- fitting -------------------------------------------------------------------

    def fit(self, X, ids: Sequence[str] | None = None, *, target_fpr: float | Sequence[float] = 0.01,
            calibration=None) -> "Detector":
        """Train both models on normal records ``X`` and calibrate them.

        ``ids`` (one per record, as ``score`` takes them) are checked, not used: a model
        and its scores depend on the records alone.  ``calibration``: records known to be
        normal (an array or DataFrame like ``X``, or ``(X, ids)``); they set the
        thresholds while ``X`` only trains.  Without it, held-out parts of ``X`` do.
        """
        x_raw, ids, kind, columns = as_records(X, ids, self.kind)
        shape = tuple(x_raw.shape[1:])
        fprs = tuple(target_fpr) if isinstance(target_fpr, Sequence) else (float(target_fpr),)
        options = dict(self.training, target_fprs=fprs)
        if options["max_examples"] is None:
            options["max_examples"] = IMAGE_MAX_EXAMPLES if kind == "image" else 0
        train = TrainConfig(**options)
        pre = (Preprocessing.for_images(*shape) if kind == "image"
               else Preprocessing("features", shape, tuple(columns)))
        cal_set = None
        if calibration is not None:
            cx, cids = calibration if isinstance(calibration, tuple) else (calibration, None)
            cal_set, _, _, _ = as_records(cx, cids, kind, columns if kind == "features" else None)
        train_rows = train_split_size(len(x_raw), train, calibrate=cal_set is None)
        model_config = default_model_config(kind, shape, self.model_options, train_rows)
        result = fit(x_raw, model_config, train, pre, cal_set)
        self.kind = kind
        self._fitted = {"result": result, "model_config": model_config, "train": train,
                        "columns": columns, "profile": data_profile(x_raw, kind, columns),
                        "calibration_records": len(cal_set) if cal_set is not None else len(x_raw)}
        manifest = {"version": "unsaved", "training": {"seed": train.seed}}
        self.bundle_ = Bundle("", "unsaved", manifest, model_config, result.preprocessing,
                              result.calibration, result.members)
        self._scorer = None
        return self

    @property
    def result_(self):
        """The ``TrainResult`` of the last ``fit`` (history, metrics, split sizes)."""
        return self._fitted.get("result")

    # -- scoring -------------------------------------------------------------------

    def score(self, X, ids: Sequence[str] | None = None, *, target_fpr: float | None = None,
              precision: str = "float32"):
        """One row per record, with the scores table's columns (``vigil.schemas.tables``).

        ``source`` is "memory" and ``run_id`` empty: the records come from no file and
        no run.  A DataFrame's scores keep its index, so they align with its rows
        (``X.join(det.score(X))``).  ``target_fpr`` defaults to the rate the model was
        calibrated for; ``precision`` is ``vigil score --precision``'s (the VAE decoder's compute precision).
        """
        import pandas as pd
        bundle = self._require_model()
        columns = list(bundle.preprocessing.feature_columns) if bundle.config.kind == "features" else None
        x_raw, ids, _, _ = as_records(X, ids, bundle.config.kind, columns)
        if tuple(x_raw.shape[1:]) != tuple(bundle.config.input_shape):
            raise DataError(f"X has records of shape {tuple(x_raw.shape[1:])}; the model takes "
                             f"{tuple(bundle.config.input_shape)}")
        alpha = default_target_fpr(bundle.calibration) if target_fpr is None else float(target_fpr)
        if self._scorer is None or self._scorer.precision != precision:
            self._scorer = bundle.scorer(precision)
        out = bundle.score_columns(self._scorer, x_raw, alpha)
        frame = {"id": list(ids), "source": [MEMORY_SOURCE] * len(ids)}
        for name in SCORE_NAMES:
            frame[name] = out[name]
        for name in SCORE_NAMES:
            frame[f"{name}_pvalue"] = out[f"{name}_pvalue"]
        names = tuple(bundle.preprocessing.feature_columns) if columns else ()
        shape = () if columns else tuple(bundle.config.input_shape)
        frame.update(anomaly_score=out["anomaly_score"], anomaly_pvalue=out["anomaly_pvalue"],
                     threshold=out["threshold"], is_anomaly=out["is_anomaly"],
                     model_version=[bundle.version] * len(ids), run_id=[""] * len(ids),
                     top_features=top_features(out["top_index"], out["top_contribution"], names,
                                               shape).to_pylist())
        return pd.DataFrame(frame, index=X.index if _is_frame(X) else None)

    def predict(self, X, ids: Sequence[str] | None = None, *, target_fpr: float | None = None) -> np.ndarray:
        """``is_anomaly`` of each record, as a boolean array."""
        return self.score(X, ids, target_fpr=target_fpr)["is_anomaly"].to_numpy()

    def threshold(self, target_fpr: float | None = None) -> float:
        """The threshold on ``anomaly_score`` at a false-positive rate (default: the model's)."""
        cal = self._require_model().calibration
        return cal.threshold(default_target_fpr(cal) if target_fpr is None else target_fpr)

    # -- the registry --------------------------------------------------------------

    def save(self, registry_root: str, name: str, *, promote: bool = True,
             allow_unflaggable: bool = False, gate_margin: float = 0.02, id_column: str = "id",
             provenance: dict | None = None, extra_files=None) -> Published:
        """Publish the fitted models as a new version, gated as ``vigil train`` gates it.

        The version becomes production when ``promote`` is set and every gate passes
        (finite losses, held-out FPR within tolerance, not worse than production, able
        to flag).  ``provenance`` records where the data came from; ``extra_files(dir)``
        may add files (``vigil train`` adds its report).
        """
        if not self._fitted:
            raise ConfigError("save() needs a fitted detector: call fit() first")
        f = self._fitted
        result, train = f["result"], f["train"]
        policy = GatePolicy(train.target_fprs, allow_unflaggable, gate_margin)
        failures = gates(result, registry_root, name, policy, result.holdout, f["calibration_records"])
        manifest = build_manifest(result, f["model_config"], train, feature_columns=f["columns"],
                                  id_column=id_column, profile=f["profile"], failures=failures,
                                  provenance=provenance)
        published = publish_version(registry_root, name, result, manifest, promote=promote,
                                    calibration_records=f["calibration_records"],
                                    target_fprs=train.target_fprs, extra_files=extra_files)
        self.bundle_ = registry.load(registry_root, name, published.version)
        self._scorer = None
        return published

    @classmethod
    def load(cls, registry_root: str, name: str, version: str | int | None = None) -> "Detector":
        """A detector scoring with a published version (default: production), verified."""
        bundle = registry.load(registry_root, name, version)
        bundle.require_scorable()
        det = cls(bundle.config.kind)
        det.bundle_ = bundle
        return det

    def _require_model(self) -> Bundle:
        if self.bundle_ is None:
            raise ConfigError("this detector has no model: call fit() or Detector.load() first")
        return self.bundle_


def _is_frame(X) -> bool:
    """A pandas DataFrame (pandas is not imported to ask)."""
    return hasattr(X, "columns") and hasattr(X, "to_numpy")


def as_records(X, ids: Sequence[str] | None, kind: str | None,
               columns: list[str] | None = None) -> tuple[np.ndarray, list[str], str, list[str]]:
    """(decoded records, ids, kind, feature columns) of an array or DataFrame, validated.

    Tables become float64 rows (a DataFrame's ``columns`` picked by name when given);
    images must be uint8 pixels, (N, H, W) gaining a channel axis.  Errors name the bad
    value.
    """
    frame_index = None
    if _is_frame(X):
        if kind == "image":
            raise DataError("a DataFrame holds a table; images are uint8 arrays (N, H, W[, C])")
        frame_index = [str(i) for i in X.index]
        x, columns = _frame_features(X, columns)
        kind = "features"
    else:
        x = np.asarray(X)
        if x.ndim == 2 and kind != "image":
            kind = "features"
            x = x.astype(np.float64)
            columns = columns or [f"f{j}" for j in range(x.shape[1])]
        elif x.ndim in (3, 4) and kind != "features":
            if x.dtype != np.uint8:
                raise DataError(f"images must be uint8 pixels of shape (N, H, W[, C]); got {x.dtype}")
            x = x[..., None] if x.ndim == 3 else x
            if x.shape[-1] not in (1, 3):
                raise DataError(f"images have {x.shape[-1]} channels; vigil takes 1 or 3")
            kind, columns = "image", []
        else:
            raise DataError(f"X has shape {x.shape}: expected (rows, features) for a table or "
                             f"(N, H, W[, C]) uint8 images" + (f" for kind={kind!r}" if kind else ""))
    if len(x) == 0:
        raise DataError("X holds no records")
    if kind == "features" and x.shape[1] == 0:
        raise DataError("X has no feature columns")
    if kind == "features":
        if columns and x.shape[1] != len(columns):
            raise DataError(f"X has {x.shape[1]} columns; the model takes {len(columns)}")
        bad = np.argwhere(~np.isfinite(x))
        if len(bad):
            r, c = bad[0]
            raise DataError(f"X row {r}, column {columns[c]!r}: {x[r, c]} is not finite")
    ids = [str(i) for i in ids] if ids is not None else frame_index or [str(i) for i in range(len(x))]
    if len(ids) != len(x):
        raise DataError(f"{len(ids)} ids for {len(x)} records")
    return x, ids, kind, list(columns or [])


def _frame_features(X, columns: list[str] | None) -> tuple[np.ndarray, list[str]]:
    """(float64 values, feature names) of a DataFrame: the model's ``columns``, else every
    column.  A column of number lists or arrays (an embedding) is a feature per element,
    named ``emb[0]`` ... by ``vigil.schemas.features``, as ``vigil train`` names them."""
    from pandas.api.types import is_bool_dtype, is_numeric_dtype
    if len(X) == 0:
        raise DataError("X holds no records")
    label = {str(c): c for c in X.columns}
    if not columns:
        columns = []
        for c in label:
            values = X[label[c]]
            numeric = is_numeric_dtype(values) or is_bool_dtype(values)
            length = None if numeric else _vector_length(values)
            columns += element_names(c, length) if length else [c]
    vectors: dict[str, np.ndarray] = {}
    out = np.empty((len(X), len(columns)))
    for j, name in enumerate(columns):
        found = source(name, label)
        if found is None:
            raise DataError(f"X has no column {column_name(name)!r} (the model's features: "
                            f"{_shown(columns)})")
        column, index = found
        values = X[label[column]]
        if index is None:
            if not (is_numeric_dtype(values) or is_bool_dtype(values)):
                raise DataError(f"column {column!r} is {values.dtype}, not numeric")
            out[:, j] = values.to_numpy(np.float64)
            continue
        if column not in vectors:
            vectors[column] = _stacked(values, column)
        if index >= vectors[column].shape[1]:
            raise DataError(f"column {column!r} holds {vectors[column].shape[1]} values per row; "
                            f"the model reads {name}")
        out[:, j] = vectors[column][:, index]
    return out, columns


def _vector_length(values) -> int | None:
    """The length of the first value if a column holds sequences of numbers (numpy arrays
    or lists in an object column, or a pyarrow-backed list column), else None."""
    first = next((v for v in values if hasattr(v, "__len__")), None)
    if not isinstance(first, (list, tuple, np.ndarray)):
        return None
    first = np.asarray(first)
    return len(first) if first.ndim == 1 and first.dtype.kind in "biuf" else None


def _stacked(values, column: str) -> np.ndarray:
    """A column of equal-length number sequences as one float64 (rows, length) array."""
    lengths = np.array([len(v) if hasattr(v, "__len__") else -1 for v in values])  # -1: None, NaN, pd.NA
    odd = np.flatnonzero((lengths < 0) | (lengths != lengths[0]))
    if len(odd):
        row = int(odd[0])
        held = "no list" if lengths[row] < 0 else f"{lengths[row]} values; row 0 holds {lengths[0]}"
        raise DataError(f"column {column!r} row {row} (index {values.index[row]!r}) holds {held}")
    try:
        return np.stack([np.asarray(v, np.float64) for v in values])
    except (TypeError, ValueError) as exc:
        raise DataError(f"column {column!r} is not a column of numbers or of number lists") from exc


def _shown(columns: list[str], n: int = 6) -> str:
    return ", ".join(columns[:n]) + (f" and {len(columns) - n} more" if len(columns) > n else "")
