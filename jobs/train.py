"""The training job: read normal data, fit both models, calibrate, publish, gate, promote.

Input is read with the same readers and decoder the scoring pipeline uses, so training
and scoring see records the same way.  Records are held in memory as decoded arrays
(uint8 for images) up to ``max_records``.  An optional calibration input, records known
to be normal, sets the thresholds and gates while the (possibly contaminated) training
input only trains.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field

import numpy as np

from vigil.models import registry
from vigil.models.bundle import save_models
from vigil.models.config import FEATURE_TAIL, IMAGE_MAX_EXAMPLES, ModelConfig, TrainConfig
from vigil.models.preprocessing import Preprocessing
from vigil.models.splits import train_split_size
from vigil.models.training import TrainResult, data_profile, fit, validation_metrics
from vigil.pipeline.decode import DecodeSpec, decode
from vigil.pipeline.options import absolute_uri
from vigil.pipeline.preflight import InputError, check_columns, match_inputs, resolve_formats, table_schema
from vigil.pipeline.readers import UNKNOWN_FORMAT, ReadSpec, printable, read_file
from vigil.pipeline.records import FileStats, RawRecord, ScoringInput
from vigil.schemas import DISTRIBUTION, __version__
from vigil.schemas.manifest import strict_json

LOG = logging.getLogger("vigil.train")
CODE_VERSION = f"{DISTRIBUTION} {__version__}"
EXIT_GATE_FAILED = 5
METADATA_COLUMNS = ("label",)      # never picked as features unless named in --feature-columns


@dataclass(frozen=True)
class TrainJobConfig:
    inputs: tuple[str, ...]
    registry: str
    name: str
    format: str = "auto"
    id_column: str = "id"
    feature_columns: tuple[str, ...] = ()
    label_column: str | None = None
    normal_values: tuple[str, ...] = ()
    image_size: tuple[int, int] | None = None
    channels: int | None = None
    latent_dim: int | None = None
    likelihood: str | None = None
    members: int | None = None          # None: the kind's default (1 for images, 3 for tables,
                                        # 5 cross-fitted for tables with fewer rows than features)
    calibration_inputs: tuple[str, ...] = ()    # curated normal records for thresholds and
                                                # gates; () = held-out training records
    promote: bool = True
    max_records: int = 2_000_000
    gate_margin: float = 0.02
    allow_unflaggable: bool = False     # promote although no target FPR can flag anything
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self):
        # Resolved once: the manifest records where the data was, from any folder.
        for name in ("inputs", "calibration_inputs"):
            object.__setattr__(self, name, tuple(absolute_uri(p) for p in getattr(self, name)))
        object.__setattr__(self, "registry", absolute_uri(self.registry) if self.registry else "")


@dataclass
class TrainOutcome:
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
    files = resolve_formats(match_inputs(inputs, 100_000), cfg.format, None)
    known = [f for f in files if f.format != UNKNOWN_FORMAT]    # the rest are skipped
    kinds = {"image" if f.format in ("image", "tfrecord-image") else "features" for f in known}
    if len(kinds) != 1:
        raise InputError(f"{what} inputs mix images and features; train one kind at a time")
    return files, known, kinds.pop()


def _records(files, cfg: TrainJobConfig, columns: list[str], carry: tuple[str, ...]):
    """Every record of the files, in order; an unreadable one as None."""
    for f in files:
        spec = ReadSpec(f.format, cfg.id_column, tuple(columns), carry, f.root)
        for item in read_file(f.uri, spec, FileStats(printable(f.uri))):
            yield item if isinstance(item, RawRecord) else None


def _collect(decoded, limit: int) -> tuple[list[np.ndarray], list[str], int]:
    """(arrays, ids, unusable count) of decoded records, up to ``limit`` usable ones."""
    arrays, ids, skipped = [], [], 0
    for out in decoded:
        if not isinstance(out, ScoringInput):
            skipped += 1
            continue
        arrays.append(out.x)
        ids.append(out.id)
        if len(arrays) >= limit:
            break
    return arrays, ids, skipped


def load_training_data(cfg: TrainJobConfig):
    """(decoded array, ids, kind, feature columns) of the normal training records."""
    files, known, kind = _input_files(cfg.inputs, cfg, "training")
    columns = list(cfg.feature_columns)
    if kind == "features" and not columns and known[0].format in ("parquet", "csv"):
        schema = table_schema(known[0])
        if schema is None:
            raise InputError(f"{known[0].uri}: cannot read its header to find feature columns")
        # "label" is metadata by convention (scoring carries it through by default); a
        # label used as a feature would leak the answer into the model.
        skip = {cfg.id_column, cfg.label_column, *METADATA_COLUMNS}
        columns = [f.name for f in schema if f.name not in skip and
                   (str(f.type).startswith(("int", "uint", "float", "double", "bool")))]
        LOG.info("feature columns (%d): %s", len(columns), ", ".join(columns[:20])
                 + (" ..." if len(columns) > 20 else ""))
    check_columns(files, cfg.id_column, columns, cfg.label_column)
    carry = (cfg.label_column,) if cfg.label_column else ()
    shape, others = None, []

    def normal_records():
        nonlocal shape
        for item in _records(files, cfg, columns, carry):
            if item is None:
                yield None
            elif _keep(item, cfg):
                shape = shape or _input_shape(item, kind, cfg)
                yield decode(item, DecodeSpec(kind, shape))
            elif len(others) < 500 and shape is not None:   # for the report's latent map
                other = decode(item, DecodeSpec(kind, shape))
                if isinstance(other, ScoringInput):
                    others.append(other.x)

    arrays, ids, skipped = _collect(normal_records(), cfg.max_records)
    if not arrays:
        raise InputError("no usable normal records in the training input"
                         + (f" (label column '{cfg.label_column}' in {list(cfg.normal_values)})"
                            if cfg.label_column else ""))
    if skipped:
        LOG.warning("skipped %d unusable training records", skipped)
    if kind == "features" and not columns:
        columns = [f"f{i}" for i in range(shape[0])]
    return np.stack(arrays), ids, kind, columns, (np.stack(others) if others else None)


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
    decoded = (decode(item, DecodeSpec(kind, shape)) if item is not None else None
               for item in _records(files, cfg, columns, ()))
    arrays, ids, skipped = _collect(decoded, cfg.max_records)
    if skipped:
        LOG.warning("skipped %d unusable calibration records", skipped)
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


def default_model_config(kind: str, shape: tuple[int, ...], cfg: TrainJobConfig,
                         train_rows: int) -> ModelConfig:
    """Defaults that work without tuning on images and on tables.

    ``train_rows`` is the size of the split that fits the weights; tables with fewer of
    them than features get linear, untrimmed, cross-fitted models with a higher variance
    floor and log-scaled inputs.  The reasons and their measurements: docs/design.md.
    """
    if kind == "image":
        # Scores are judged against images of the same complexity (vigil.models.complexity),
        # and anomaly_score is the DAE's surprise at its blurred residual: a misplaced edge
        # leaves a +/- pair the blur cancels, a missing or extra stroke a patch it keeps.
        # 16 importance samples: conv decoders dominate scoring cost.
        return ModelConfig("image", shape, latent_dim=cfg.latent_dim or 16, hidden=(32, 64),
                           likelihood=cfg.likelihood or "bernoulli", n_recon_samples=16,
                           n_iwae_samples=16, combine="dae", dae_error_sigma=0.7,
                           adjust_complexity=True, members=cfg.members or 1)
    d = shape[0]
    width = 128 if d >= 32 else 64
    # Tables arrive unlabelled and contaminated: each batch's highest-loss 40% (after the
    # KL warm-up) does not train the models, so anomalies in the data are not learned as
    # normal (a trimmed likelihood).  Latent 32 whatever the width: the KL term switches
    # off what a table does not need.  Three members, because one training seed moves a
    # table's AUROC a lot and dense nets train in seconds.
    # With fewer training rows than features a nonlinear net can only memorise the rows:
    # linear networks (probabilistic PCA and a PCA residual), nothing trimmed (it would
    # starve them), a variance floor of 0.3 (per-feature variances from so few residuals
    # are mostly luck), a log scale past one robust unit (else a few features that spiked
    # in a normal row decide a 512-feature sum), and five cross-fitted members, since
    # holding 40% of ~160 rows out of training costs such tables the most.
    few_rows = train_rows < d
    return ModelConfig("features", shape, latent_dim=cfg.latent_dim or 32,
                       hidden=() if few_rows else (width, width // 2),
                       likelihood=cfg.likelihood or "gaussian",
                       min_scale=0.3 if few_rows else 0.03,
                       feature_tail=1.0 if few_rows else FEATURE_TAIL,
                       trim_fraction=0.0 if few_rows else 0.4,
                       members=cfg.members or (5 if few_rows else 3),
                       cross_fit=few_rows and (cfg.members or 5) > 1)


def flag_advice(calibration, alpha: float, normal_records: int) -> str | None:
    """What to change when a target FPR cannot flag: a reachable rate, or the rows it needs."""
    why = calibration.cannot_flag(alpha)
    if why is None:
        return None
    limit = calibration.flag_limit(alpha)
    share = limit["values"] / max(normal_records, 1)
    rows = math.ceil(limit["values_needed"] / share) if share else None
    more = f", or train on about {rows} normal records" if rows else ""
    return f"{why}: train with --target-fpr {math.ceil(limit['smallest_fpr'] * 1000) / 1000:g}{more}"


def gates(result: TrainResult, cfg: TrainJobConfig, x_val_raw: np.ndarray, val_ids: list[str],
          calibration_records: int) -> list[str]:
    """Reasons not to promote; [] when every gate passes.

    ``calibration_records`` is how many normal records the calibration splits came from.
    """
    from scipy.stats import binom
    failures = []
    if not cfg.allow_unflaggable and all(
            result.calibration.cannot_flag(a) for a in cfg.train.target_fprs):
        failures.append("is_anomaly can never be true: " + "; ".join(
            flag_advice(result.calibration, a, calibration_records) or ""
            for a in cfg.train.target_fprs) + " (--allow-unflaggable promotes it anyway)")
    if not result.metrics["finite"]:
        failures.append("a training or validation loss is not finite")
    val = result.metrics["validation"]
    n = val.get("rows", 0)
    for alpha, fpr in val.get("fpr", {}).items():
        limit = binom.ppf(0.999, n, float(alpha)) / n if n else 1.0
        if fpr > max(limit, float(alpha)):
            failures.append(f"held-out FPR {fpr:.3%} at target {float(alpha):.1%} is above "
                            f"the tolerance {limit:.3%} on {n} normal rows")
    current = registry.production_version(cfg.registry, cfg.name)
    if current and n:
        prod = registry.load(cfg.registry, cfg.name, current)
        unscorable = prod.calibration.encoder_mismatch()
        if unscorable:      # its FPR measured here would be an artefact of this machine
            LOG.warning("not comparing with production %s: %s", current, unscorable)
        elif tuple(prod.config.input_shape) == tuple(result.preprocessing.input_shape):
            raw = np.asarray(x_val_raw)
            scores = prod.score_raw(prod.scorer(), raw, val_ids)
            prod_val = validation_metrics(prod.calibration, scores)
            for alpha, fpr in val.get("fpr", {}).items():
                prod_fpr = prod_val["fpr"].get(alpha, prod_val["fpr"].get(next(iter(prod_val["fpr"]))))
                if fpr > prod_fpr + cfg.gate_margin:
                    failures.append(f"held-out FPR {fpr:.3%} is worse than production "
                                    f"{current}'s {prod_fpr:.3%} by more than {cfg.gate_margin:.1%}")
    return failures


def run_training(cfg: TrainJobConfig) -> TrainOutcome:
    """Train, publish a version, and promote it when the gates pass."""
    # A registry that cannot be reached fails now, not after the training it would hold.
    registry.production_version(cfg.registry, cfg.name)
    x_raw, ids, kind, columns, x_other = load_training_data(cfg)
    shape = tuple(x_raw.shape[1:])
    if cfg.train.max_examples is None:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(
            cfg.train, max_examples=IMAGE_MAX_EXAMPLES if kind == "image" else 0))
    pre = (Preprocessing.for_images(*shape) if kind == "image"
           else Preprocessing("features", shape, tuple(columns)))
    calibration_set = (load_calibration_data(cfg, kind, shape, columns)
                       if cfg.calibration_inputs else None)
    train_rows = train_split_size(len(x_raw), cfg.train, calibrate=calibration_set is None)
    model_config = default_model_config(kind, shape, cfg, train_rows)
    if kind == "features" and not model_config.hidden:
        LOG.info("%d training rows for %d features: linear, untrimmed table models, "
                 "inputs on a log scale past %g robust units%s", train_rows, shape[0],
                 model_config.feature_tail,
                 f", {model_config.members} members cross-fitted on as many folds"
                 if model_config.cross_fit else "")
    LOG.info("training on %d normal %s records of shape %s", len(x_raw), kind, shape)
    if calibration_set is not None:
        LOG.info("calibrating on %d curated normal records", len(calibration_set[1]))
    result = fit(x_raw, ids, model_config, cfg.train, pre, calibration_set)
    x_holdout, holdout_ids = result.holdout
    calibration_records = len(calibration_set[1]) if calibration_set is not None else len(x_raw)
    failures = gates(result, cfg, x_holdout, holdout_ids, calibration_records)
    manifest = {
        "format": 1, "code_version": CODE_VERSION,
        "input": {"kind": kind, "shape": list(shape), "feature_columns": columns,
                  "id_column": cfg.id_column, "channels": shape[-1] if kind == "image" else None},
        "preprocessing": result.preprocessing.to_dict(),
        "model_config": model_config.to_dict(),
        "training": {"config": cfg.train.to_dict(), "seed": cfg.train.seed,
                     "inputs": list(cfg.inputs), "label_column": cfg.label_column,
                     "normal_values": list(cfg.normal_values),
                     "calibration_inputs": list(cfg.calibration_inputs),
                     "split_sizes": result.split_sizes,
                     "history": result.history,
                     "device": {"strategy": result.plan.strategy, "devices": list(result.plan.devices),
                                "precision": result.plan.precision, "reason": result.plan.reason}},
        "metrics": strict_json(result.metrics),
        "calibration": result.calibration.to_dict(),
        "profile": data_profile(x_raw, kind, columns),
        "gates": {"passed": not failures, "failures": failures},
    }
    manifest = strict_json(manifest)
    def write_files(directory: str) -> dict[str, str]:
        import tensorflow as tf

        from vigil.models.bundle import sha256_of
        from vigil.pipeline.report.training_report import render
        files = save_models(directory, result.members)
        other = result.preprocessing.transform(x_other) if x_other is not None else None
        with tf.io.gfile.GFile(f"{directory}/report.html", "w") as f:
            f.write(render(cfg.name, result, result.preprocessing.transform(x_holdout), other))
        return {**files, "report.html": sha256_of(f"{directory}/report.html")}
    version = registry.publish(cfg.registry, cfg.name, write_files, manifest)
    promoted = False
    if cfg.promote and not failures:
        registry.promote(cfg.registry, cfg.name, version)
        promoted = True
    return TrainOutcome(version, promoted, failures, result,
                        {a: flag_advice(result.calibration, a, calibration_records)
                         for a in cfg.train.target_fprs})
