"""A vigil model dropped into Beam's AnomalyDetection transform as an OfflineDetector."""
from __future__ import annotations

import apache_beam as beam
import numpy as np
from apache_beam.ml.anomaly.transforms import AnomalyDetection
from apache_beam.testing.util import assert_that

from vigil.models import registry
from vigil.pipeline.anomaly import offline_detector
from vigil.pipeline.handler import LoadedModel


def test_offline_detector_matches_vigil_scores(features_registry):
    reg, columns = features_registry["registry"], features_registry["columns"]
    version = registry.resolve(reg, "cardio")
    path = registry.version_dir(reg, "cardio", version)
    x = features_registry["x"][:20]
    rows = [(f"k{i}", beam.Row(id=f"r{i}", **{c: float(v) for c, v in zip(columns, x[i])}))
            for i in range(len(x))]
    bundle = registry.load(reg, "cardio")
    expected = LoadedModel(bundle).score(x, 0.01)

    def check(results):
        results = sorted(results, key=lambda kv: int(kv[0][1:]))
        assert len(results) == 20
        for i, (key, result) in enumerate(results):
            (prediction,) = result.predictions
            assert prediction.model_id == f"cardio/{version}"
            np.testing.assert_allclose(prediction.score, expected["anomaly_score"][i])
            assert prediction.label == int(expected["is_anomaly"][i])
            assert prediction.threshold == expected["threshold"][i]
            assert result.example.id == f"r{i}"

    with beam.Pipeline("FnApiRunner") as p:
        out = (p | beam.Create(rows)
               | AnomalyDetection(offline_detector(path, f"cardio/{version}")))
        assert_that(out, check)
