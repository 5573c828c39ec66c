"""The training job: read normal data, fit both models, calibrate, publish, gate, promote.

Input is read with the same readers and decoder the scoring pipeline uses, so training
and scoring see records the same way.  Records are held in memory as decoded arrays
(uint8 for images) up to ``max_records``.  An optional calibration input, records known
to be normal, sets the thresholds and gates while the (possibly contaminated) training
input only trains.
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from vigil.jobs.train_config import TrainJobConfig
from vigil.models import registry
from vigil.models.training import TrainResult
from vigil.pipeline.columns import number_type, vector_type
from vigil.pipeline.commit import reasons_text
from vigil.pipeline.decode import DecodeSpec, decode, source_shape
from vigil.pipeline.formats import UNKNOWN_FORMAT
from vigil.pipeline.preflight import (
    InputError,
    InputFile,
    check_columns,
    check_folder,
    match_inputs,
    resolve_formats,
    table_schema,
    vector_length,
)
from vigil.pipeline.readers import ReadSpec, printable, read_file
from vigil.pipeline.records import DeadLetter, FileStats, RawRecord, ScoringInput
from vigil.schemas.features import element_names

LOG = logging.getLogger("vigil.train")
METADATA_COLUMNS = ("label",)      # never picked as features unless named in --feature-columns
MAX_SOURCE_SHAPES = 20             # more stored image shapes than this: sizes vary, none unexpected


@dataclass
class TrainOutcome:
    """What ``run_training`` published: the version, whether it was promoted and why not, the fit."""
    version: str
    promoted: bool
    gate_failures: list[str]
    result: TrainResult
    cannot_flag: dict[float, str | None] = field(default_factory=dict)   # target -> advice


def _keep(record: RawRecord, cfg: TrainJobConfig) -> bool:
    if cfg.label_column is None:
        return True
    value = record.labels.get(cfg.label_column)
    return value is not None and str(value) in cfg.normal_values


def _input_files(inputs: tuple[str, ...], cfg: TrainJobConfig, what: str):
    """(matched files, those of a known format, their one kind) of a set of input globs."""
    matched = match_inputs(inputs, 100_000)
    for item in matched.skipped[:5]:
        LOG.info("skipped %s: %s, not read", item["uri"], item["skipped"])
    if len(matched.skipped) > 5:
        LOG.info("skipped %d more matched paths that are not read", len(matched.skipped) - 5)
    files = resolve_formats(matched.files, cfg.format, None)
    known = [f for f in files if f.format != UNKNOWN_FORMAT]    # the rest are skipped
    kinds = {"image" if f.format in ("image", "tfrecord-image") else "features" for f in known}
    if len(kinds) != 1:
        raise InputError(f"{what} inputs mix images and features; train one kind at a time")
    return files, known, kinds.pop()


def _records(files, cfg: TrainJobConfig, columns: list[str], carry: tuple[str, ...]):
    """Every record of the files, in order (RawRecord); what could not be read as its DeadLetter."""
    for f in files:
        spec = ReadSpec(f.format, cfg.id_column, tuple(columns), carry, f.root)
        yield from read_file(f.uri, spec, FileStats(printable(f.uri)))


@dataclass
class Skipped:
    """Records training could not use: how many for each reason, and the first one."""
    reasons: Counter = field(default_factory=Counter)
    first: DeadLetter | None = None

    def add(self, dead: DeadLetter) -> None:
        """Count one unusable record."""
        self.reasons[dead.reason] += 1
        self.first = self.first or dead

    def summary(self, what: str) -> str:
        """The warning: skipped 2 unusable training records (2 non_finite_feature; first: ...)."""
        n = sum(self.reasons.values())
        counts = reasons_text(self.reasons)
        where = f"id {self.first.id} in {self.first.source}" if self.first.id else self.first.source
        return (f"skipped {n} unusable {what} record{'s' if n != 1 else ''} ({counts}; first: "
                f"{where}: {self.first.message})")


def _collect(decoded, limit: int) -> tuple[list[np.ndarray], list[str], Skipped]:
    """(arrays, ids, what was skipped) of decoded records, up to ``limit`` usable ones."""
    arrays, ids, skipped = [], [], Skipped()
    for out in decoded:
        if isinstance(out, DeadLetter):
            skipped.add(out)
            continue
        arrays.append(out.x)
        ids.append(out.id)
        if len(arrays) >= limit:
            break
    return arrays, ids, skipped


class TrainingData(NamedTuple):
    """The normal training records, decoded, and what the report and manifest keep of them."""
    x: np.ndarray                       # uint8 images or float64 feature rows
    ids: list[str]
    kind: str
    columns: list[str]
    others: np.ndarray | None           # up to 500 records outside the normal values
    source_shapes: list[str] | str | None   # images: ``_shapes_seen``


def load_training_data(cfg: TrainJobConfig) -> TrainingData:
    """The normal training records of ``cfg.inputs``, decoded."""
    files, known, kind = _input_files(cfg.inputs, cfg, "training")
    columns = list(cfg.feature_columns)
    if kind == "features" and not columns and known[0].format in ("parquet", "csv"):
        schema = table_schema(known[0])
        if schema is None:
            raise InputError(f"{known[0].uri}: cannot read its header to find feature columns")
        # "label" is metadata by convention (scoring carries it through by default); a
        # label used as a feature would leak the answer into the model.
        skip = {cfg.id_column, cfg.label_column, *METADATA_COLUMNS}
        usable = [f for f in schema if f.name not in skip]
        columns = [f.name for f in usable if number_type(f.type) or vector_type(f.type)]
        # A numeric column with one stray text value ("?", "n/a") reads as text: say so
        # rather than train without it.
        left_out = [f"{f.name} ({f.type})" for f in usable
                    if not (number_type(f.type) or vector_type(f.type))]
        if not columns:
            raise InputError(f"{known[0].uri}: no numeric feature columns"
                             + (f" ({', '.join(left_out[:8])} are not numbers)" if left_out else "")
                             + "; name the features with --feature-columns")
        LOG.info("feature columns (%d): %s", len(columns), ", ".join(columns[:20])
                 + (" ..." if len(columns) > 20 else ""))
        if left_out:
            LOG.warning("not numeric, so not used as features: %s%s; to use a column, name it "
                        "in --feature-columns (rows whose value is not a number are then skipped)",
                        ", ".join(left_out[:20]), " ..." if len(left_out) > 20 else "")
    if kind == "features" and known[0].format == "parquet":
        columns = _vector_elements(known[0], columns)
    check_columns(files, cfg.id_column, columns, cfg.label_column)
    carry = (cfg.label_column,) if cfg.label_column else ()
    shape, others, source_shapes = None, [], Counter()

    def normal_records():
        nonlocal shape
        for item in _records(files, cfg, columns, carry):
            if isinstance(item, DeadLetter):
                yield item
            elif _keep(item, cfg):
                shape = shape or _input_shape(item, kind, cfg)
                decoded = decode(item, DecodeSpec(kind, shape, feature_names=tuple(columns)))
                if kind == "image" and isinstance(decoded, ScoringInput):
                    source_shapes[source_shape(item.value)] += 1
                yield decoded
            elif len(others) < 500 and shape is not None:   # for the report's latent map
                other = decode(item, DecodeSpec(kind, shape))
                if isinstance(other, ScoringInput):
                    others.append(other.x)

    arrays, ids, skipped = _collect(normal_records(), cfg.max_records)
    if not arrays:
        raise InputError("no usable normal records in the training input"
                         + (f" (label column '{cfg.label_column}' in {list(cfg.normal_values)})"
                            if cfg.label_column else ""))
    if skipped.first:
        LOG.warning("%s", skipped.summary("training"))
    if kind == "features" and not columns:
        columns = [f"f{i}" for i in range(shape[0])]
    return TrainingData(np.stack(arrays), ids, kind, columns, np.stack(others) if others else None,
                        _shapes_seen(source_shapes))


def _shapes_seen(counts: Counter) -> list[str] | str | None:
    """The training images' stored shapes, most common first, for the run report's input
    check; "varied" past MAX_SOURCE_SHAPES of them; None for tables."""
    if not counts:
        return None
    if len(counts) > MAX_SOURCE_SHAPES:
        return "varied"
    return [shape for shape, _ in counts.most_common()]


def _vector_elements(first: InputFile, columns: list[str]) -> list[str]:
    """``columns`` with each column of number lists (an embedding) replaced by its
    elements, ``emb[0]`` ... ``emb[n-1]``, n the length of the first row that has one."""
    schema = table_schema(first)
    if schema is None:
        return columns
    out = []
    for name in columns:
        if name not in schema.names or not vector_type(schema.field(name).type):
            out.append(name)
            continue
        length = vector_length(first, name)
        if not length:
            raise InputError(f"{first.uri}: column '{name}' holds only null or empty lists; "
                             "name the feature columns with --feature-columns")
        LOG.info("column '%s' holds vectors of %d numbers: features %s[0] ... %s[%d]",
                 name, length, name, name, length - 1)
        out.extend(element_names(name, length))
    return out


def load_calibration_data(cfg: TrainJobConfig, kind: str, shape: tuple[int, ...],
                          columns: list[str]) -> tuple[np.ndarray, list[str]]:
    """(decoded array, ids) of ``cfg.calibration_inputs``, decoded like the training records.

    Every record is taken as normal: the label filter is for the training input, where
    normal and anomalous records are mixed; a calibration set is curated to be normal.
    """
    files, _, cal_kind = _input_files(cfg.calibration_inputs, cfg, "calibration")
    if cal_kind != kind:
        raise InputError(f"--calibration-input holds {cal_kind} records, the training input "
                         f"{kind} records; they must be the same kind")
    check_columns(files, cfg.id_column, columns)
    spec = DecodeSpec(kind, shape, feature_names=tuple(columns))
    decoded = (decode(item, spec) if isinstance(item, RawRecord) else item
               for item in _records(files, cfg, columns, ()))
    arrays, ids, skipped = _collect(decoded, cfg.max_records)
    if skipped.first:
        LOG.warning("%s", skipped.summary("calibration"))
    if not arrays:
        raise InputError("no usable records in the calibration input")
    return np.stack(arrays), ids


def _input_shape(first: RawRecord, kind: str, cfg: TrainJobConfig) -> tuple[int, ...]:
    if kind == "features":
        return (len(first.value),)
    import io

    from PIL import Image
    img = Image.open(io.BytesIO(first.value))
    h, w = cfg.image_size or (img.size[1], img.size[0])
    channels = cfg.channels or (1 if img.mode in ("L", "I", "I;16", "1") else 3)
    return (h, w, channels)


def run_training(cfg: TrainJobConfig) -> TrainOutcome:
    """Read the inputs, fit a ``Detector`` on them, publish a version and gate its promotion."""
    from vigil.models.detector import Detector
    from vigil.models.publishing import report_file
    from vigil.pipeline.report.training_report import render

    # A registry that cannot be reached fails now, not after the training it would hold.
    check_folder(cfg.registry, "--registry")
    registry.production_version(cfg.registry, cfg.name)
    x_raw, ids, kind, columns, x_other, source_shapes = load_training_data(cfg)
    shape = tuple(x_raw.shape[1:])
    calibration_set = (load_calibration_data(cfg, kind, shape, columns)
                       if cfg.calibration_inputs else None)
    t = cfg.train
    detector = Detector(kind, latent_dim=cfg.latent_dim, likelihood=cfg.likelihood, members=cfg.members,
                        epochs=t.epochs, max_examples=t.max_examples, batch_size=t.batch_size,
                        seed=t.seed, device=t.device, mixed_precision=t.mixed_precision,
                        verbose=t.verbose)
    LOG.info("training on %d normal %s records of shape %s", len(x_raw), kind, shape)
    if calibration_set is not None:
        LOG.info("calibrating on %d curated normal records", len(calibration_set[1]))
    if kind == "features":
        x_raw = _as_frame(x_raw, columns, ids)
    detector.fit(x_raw, ids, target_fpr=t.target_fprs, calibration=calibration_set)
    result = detector.result_
    model_config = detector.bundle_.config
    if kind == "features" and not model_config.hidden:
        LOG.info("%d training rows for %d features: linear, untrimmed table models, "
                 "inputs on a log scale past %g robust units%s", result.split_sizes["train"], shape[0],
                 model_config.feature_tail,
                 f", {model_config.members} members cross-fitted on as many folds"
                 if model_config.cross_fit else "")

    def report(directory: str) -> dict[str, str]:
        other = result.preprocessing.transform(x_other) if x_other is not None else None
        return report_file(directory, render(cfg.name, result, result.preprocessing.transform(
            result.holdout), other))

    published = detector.save(
        cfg.registry, cfg.name, promote=cfg.promote, allow_unflaggable=cfg.allow_unflaggable,
        gate_margin=cfg.gate_margin, id_column=cfg.id_column, extra_files=report,
        provenance={"inputs": list(cfg.inputs), "label_column": cfg.label_column,
                    "normal_values": list(cfg.normal_values),
                    "calibration_inputs": list(cfg.calibration_inputs),
                    **({"source_shapes": source_shapes} if source_shapes else {})})
    return TrainOutcome(published.version, published.promoted, published.gate_failures, result,
                        published.cannot_flag)


def _as_frame(x_raw: np.ndarray, columns: list[str], ids: list[str]):
    """Feature rows as a DataFrame of their named columns, the way the Python API takes them."""
    import pandas as pd
    return pd.DataFrame(x_raw, columns=columns, index=ids)
