"""vigil's RunInference ModelHandler: one verified bundle, all scores in one call.

Beam's built-in TensorFlow handlers load through Keras 3 and tensorflow_hub; vigil's
bundles are tf-keras ``.keras`` files behind checksums and an allowlist, so vigil brings
its own handler.  Each batch is preprocessed with the bundle's transform, scored by the
compiled ``Scorer`` and calibrated (p-values, ``anomaly_score``, threshold, flag) with
numpy, vectorised over the batch.

``VigilModelHandler`` scores examples one result each: ``ScoringInput``s, and
``beam.Row``s with an ``id`` and an ``x`` field (``apache_beam.ml.anomaly.OfflineDetector``).
``BlockModelHandler``, vigil's pipeline, scores ``RecordBlock``s: Beam batches them by
their rows, and each batch gives one result whose inference holds arrays over its rows,
so no per-record Python runs between reading a table and writing its scores.
"""
from __future__ import annotations

from typing import Any, Iterable, Optional, Sequence

import numpy as np
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from vigil.models.bundle import Bundle, load_bundle
from vigil.models.scoring import IMAGE_BLOCK, Scorer
from vigil.pipeline.records import RecordBlock, ScoringInput
from vigil.schemas.features import source


class LoadedModel:
    """A verified bundle with its compiled scorer, used through methods only.

    With ``model_copies`` Beam loads the model in a process of its own and hands each
    worker a proxy that forwards method calls (not attribute reads), so everything the
    handler needs from the model is a method.
    """

    def __init__(self, bundle: Bundle, precision: str = "float32"):
        self._bundle = bundle
        self._scorer: Scorer = bundle.scorer(precision)

    def version(self) -> str:
        """The model version's number."""
        return self._bundle.version

    def feature_columns(self) -> tuple[str, ...]:
        """The feature columns a table model reads, in order (() for images)."""
        return tuple(self._bundle.preprocessing.feature_columns)

    def score(self, raw: np.ndarray, target_fpr: float) -> dict:
        """Decoded records -> every output column of the scores table (arrays over the batch)."""
        return self._bundle.score_columns(self._scorer, raw, target_fpr)


class VigilModelHandler(ModelHandler[Any, dict, LoadedModel]):
    """Scores batches with a vigil model version.

    Args:
      bundle_dir: the version folder (``<registry>/<name>/versions/NNNN``), resolved once
        at launch so that a pointer change mid-run cannot mix versions.
      label: ``name/version``, used in errors and as the model id.
      target_fpr: the false-positive rate ``threshold`` and ``is_anomaly`` are set at.
      min_batch_size, max_batch_size: passed to ``BatchElements``.  The scorer runs on
        fixed-size blocks (``vigil.models.scoring.scoring_block``, for bit-identical scores), so
        batches smaller than a block waste the padding: pass one block as the minimum.
      model_copies: load this many copies of the model per machine, shared by its worker
        processes, instead of one per process (Beam's ``model_copies``; None: per process).
      precision: the compute precision of the VAE's decoder (``vigil.models.scoring.Scorer``).
    """

    def __init__(self, bundle_dir: str, label: str, target_fpr: float = 0.01, *,
                 min_batch_size: int = IMAGE_BLOCK, max_batch_size: int = 256,
                 model_copies: Optional[int] = None, precision: str = "float32", **batching):
        super().__init__(min_batch_size=min(min_batch_size, max_batch_size),
                         max_batch_size=max_batch_size, model_copies=model_copies, **batching)
        self.bundle_dir = bundle_dir
        self.label = label
        self.target_fpr = target_fpr
        self.precision = precision

    def load_model(self) -> LoadedModel:
        """Load and verify the bundle, and compile its scorer (once per worker process or shared copy)."""
        return LoadedModel(load_bundle(self.bundle_dir, self.label), self.precision)

    def run_inference(self, batch: Sequence[Any], model: LoadedModel,
                      inference_args: Optional[dict[str, Any]] = None) -> Iterable[PredictionResult]:
        """Score a batch; one ``PredictionResult`` per example, the model version as its id."""
        # One call per batch: behind Beam's model_copies proxy each method call crosses processes.
        columns = model.feature_columns()
        out = model.score(np.stack([_array(e, columns) for e in batch]), self.target_fpr)
        version = model.version()
        for i, example in enumerate(batch):
            yield PredictionResult(example, {k: v[i] for k, v in out.items()}, version)

    def get_num_bytes(self, batch: Sequence[Any]) -> int:
        """Bytes of the decoded arrays in a batch, for Beam's metrics."""
        return sum(getattr(np.asarray(getattr(e, "x", 0)), "nbytes", 0) for e in batch)

    def get_metrics_namespace(self) -> str:
        """Beam metrics from this handler go under ``vigil``."""
        return "vigil"

    def batch_elements_kwargs(self):
        """``BatchElements``' limits: at least one scoring block, at most ``--batch-size``."""
        return self._batching_kwargs


class BlockModelHandler(VigilModelHandler):
    """Scores ``RecordBlock``s: one ``PredictionResult`` per batch, for all its rows.

    The batch limits count rows, not blocks (``BatchElements``' ``element_size_fn``).
    The result's example is the batch's blocks joined into one, and its inference maps
    each output column to an array over that block's rows.
    """

    def __init__(self, bundle_dir: str, label: str, target_fpr: float = 0.01, **kwargs):
        super().__init__(bundle_dir, label, target_fpr, element_size_fn=len, **kwargs)

    def run_inference(self, batch: Sequence[RecordBlock], model: LoadedModel,
                      inference_args: Optional[dict[str, Any]] = None) -> Iterable[PredictionResult]:
        """Score the batch's rows in one call; one result holding them all."""
        block = RecordBlock.concat(batch)
        yield PredictionResult(block, model.score(block.x, self.target_fpr), model.version())

    def get_num_bytes(self, batch: Sequence[RecordBlock]) -> int:
        """Bytes of the decoded arrays in a batch, for Beam's metrics."""
        return sum(b.x.nbytes for b in batch)


def _array(example: Any, feature_columns: tuple[str, ...]) -> np.ndarray:
    """The decoded array of a ScoringInput, or of a beam.Row from Beam's anomaly API
    (which holds either ``x`` or the model's feature columns by name)."""
    if isinstance(example, ScoringInput):
        return np.asarray(example.x)
    fields = example._asdict()
    if "x" in fields:
        return np.asarray(fields["x"])
    values = []
    for name in feature_columns:
        column, index = source(name, fields) or (name, None)
        values.append(fields[column] if index is None else fields[column][index])
    return np.asarray(values, np.float64)
