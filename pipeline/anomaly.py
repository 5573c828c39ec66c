"""vigil models inside Beam's own anomaly API (``apache_beam.ml.anomaly``).

    detector = offline_detector(version_dir, "cardio/0003", features=["f0", ..., "f20"])
    keyed_rows | AnomalyDetection(detector)

gives ``AnomalyResult``s whose ``AnomalyPrediction`` carries vigil's combined score:
``score`` = ``anomaly_score``, ``label`` = ``is_anomaly``, ``threshold`` = the
conformal threshold at the target false-positive rate, ``model_id`` = the version, and
``info`` = the four scores and their p-values as JSON.  The same names and meanings are
the columns of vigil's own scores table.
"""
from __future__ import annotations

import json
from typing import Any

from apache_beam.ml.anomaly.base import AnomalyPrediction
from apache_beam.ml.anomaly.detectors.offline import OfflineDetector
from apache_beam.ml.inference.base import KeyedModelHandler, PredictionResult

from vigil.pipeline.handler import VigilModelHandler
from vigil.schemas.tables import SCORE_NAMES


def to_anomaly_prediction(keyed: tuple[Any, PredictionResult]) -> tuple[Any, AnomalyPrediction]:
    """(key, vigil PredictionResult) -> (key, AnomalyPrediction)."""
    key, result = keyed
    inf = result.inference
    info = {n: float(inf[n]) for n in SCORE_NAMES}
    info.update({f"{n}_pvalue": float(inf[f"{n}_pvalue"]) for n in SCORE_NAMES})
    info["anomaly_pvalue"] = float(inf["anomaly_pvalue"])
    return key, AnomalyPrediction(model_id=str(result.model_id),
                                  score=float(inf["anomaly_score"]),
                                  label=int(bool(inf["is_anomaly"])),
                                  threshold=float(inf["threshold"]),
                                  info=json.dumps(info))


def offline_detector(bundle_dir: str, label: str, target_fpr: float = 0.01,
                     **detector_kwargs) -> OfflineDetector:
    """An ``OfflineDetector`` scoring with a vigil model version."""
    handler = KeyedModelHandler(VigilModelHandler(bundle_dir, label, target_fpr)) \
        .with_postprocess_fn(to_anomaly_prediction)
    return OfflineDetector(handler, model_id=label, **detector_kwargs)
