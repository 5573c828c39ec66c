"""Publishing a fitted model version: its manifest, its promotion gates, the registry.

The manifest written here is the one ``vigil.models.bundle`` reads back; the gates decide
whether a new version may replace production.  ``vigil train`` and ``Detector.save``
publish through this module alone.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from vigil.models import registry
from vigil.models.bundle import save_models, sha256_of
from vigil.models.config import ModelConfig, TrainConfig
from vigil.models.training import TrainResult, validation_metrics
from vigil.schemas import DISTRIBUTION, __version__
from vigil.schemas.manifest import strict_json

LOG = logging.getLogger("vigil.train")
CODE_VERSION = f"{DISTRIBUTION} {__version__}"


@dataclass(frozen=True)
class GatePolicy:
    """When a new version may become production."""
    target_fprs: tuple[float, ...] = (0.01,)
    allow_unflaggable: bool = False     # promote although no target FPR can flag anything
    margin: float = 0.02                # held-out FPR may exceed production's by this much


@dataclass
class Published:
    """A published version: its number, whether it became production, the gates it failed, and per target
    FPR what to change if it cannot flag."""
    version: str
    promoted: bool
    gate_failures: list[str]
    cannot_flag: dict[float, str | None] = field(default_factory=dict)   # target -> advice


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


def gates(result: TrainResult, registry_root: str, name: str, policy: GatePolicy,
          holdout: np.ndarray, calibration_records: int) -> list[str]:
    """Reasons not to promote; [] when every gate passes.

    ``holdout`` is the raw held-out normal records behind the validation
    metrics; ``calibration_records`` how many normal records the calibration came from.
    """
    from scipy.stats import binom
    failures = []
    if not policy.allow_unflaggable and all(
            result.calibration.cannot_flag(a) for a in policy.target_fprs):
        failures.append("is_anomaly can never be true: " + "; ".join(
            flag_advice(result.calibration, a, calibration_records) or ""
            for a in policy.target_fprs) + " (--allow-unflaggable promotes it anyway)")
    if not result.metrics["finite"]:
        failures.append("a training or validation loss is not finite")
    val = result.metrics["validation"]
    n = val.get("rows", 0)
    for alpha, fpr in val.get("fpr", {}).items():
        limit = binom.ppf(0.999, n, float(alpha)) / n if n else 1.0
        if fpr > max(limit, float(alpha)):
            failures.append(f"held-out FPR {fpr:.3%} at target {float(alpha):.1%} is above "
                            f"the tolerance {limit:.3%} on {n} normal rows")
    current = registry.production_version(registry_root, name)
    if current and n:
        prod = registry.load(registry_root, name, current)
        unscorable = prod.calibration.encoder_mismatch()
        if unscorable:      # its FPR measured here would be an artefact of this machine
            LOG.warning("not comparing with production %s: %s", current, unscorable)
        elif tuple(prod.config.input_shape) == tuple(result.preprocessing.input_shape):
            scores = prod.score_raw(prod.scorer(), np.asarray(holdout))
            prod_val = validation_metrics(prod.calibration, scores)
            for alpha, fpr in val.get("fpr", {}).items():
                prod_fpr = prod_val["fpr"].get(alpha, prod_val["fpr"].get(next(iter(prod_val["fpr"]))))
                if fpr > prod_fpr + policy.margin:
                    failures.append(f"held-out FPR {fpr:.3%} is worse than production "
                                    f"{current}'s {prod_fpr:.3%} by more than {policy.margin:.1%}")
    return failures


def build_manifest(result: TrainResult, model_config: ModelConfig, train: TrainConfig, *,
                   feature_columns: list[str], id_column: str, profile: dict,
                   failures: list[str], provenance: dict | None = None) -> dict:
    """The manifest of a version (``vigil.models.bundle.read_manifest`` reads it back).

    ``provenance`` says where the training data came from (inputs, label filter); the
    registry adds the version, the time and every file's checksum when it publishes.
    """
    kind, shape = model_config.kind, tuple(model_config.input_shape)
    return strict_json({
        "format": 1, "code_version": CODE_VERSION,
        "input": {"kind": kind, "shape": list(shape), "feature_columns": list(feature_columns),
                  "id_column": id_column, "channels": shape[-1] if kind == "image" else None},
        "preprocessing": result.preprocessing.to_dict(),
        "model_config": model_config.to_dict(),
        "training": {"config": train.to_dict(), "seed": train.seed,
                     **{"inputs": [], "label_column": None, "normal_values": [],
                        "calibration_inputs": [], **(provenance or {})},
                     "split_sizes": result.split_sizes,
                     "history": result.history,
                     "device": {"strategy": result.plan.strategy, "devices": list(result.plan.devices),
                                "precision": result.plan.precision, "reason": result.plan.reason}},
        "metrics": strict_json(result.metrics),
        "calibration": result.calibration.to_dict(),
        "profile": profile,
        "gates": {"passed": not failures, "failures": failures},
    })


def publish_version(registry_root: str, name: str, result: TrainResult, manifest: dict, *,
                    promote: bool, calibration_records: int, target_fprs: tuple[float, ...],
                    extra_files: Callable[[str], dict[str, str]] | None = None) -> Published:
    """Write the models (and ``extra_files(directory) -> {name: sha256}``), publish the
    version, and promote it when the manifest's gates passed and ``promote`` is set."""
    def write_files(directory: str) -> dict[str, str]:
        files = save_models(directory, result.members)
        return {**files, **(extra_files(directory) if extra_files else {})}
    version = registry.publish(registry_root, name, write_files, manifest)
    failures = manifest["gates"]["failures"]
    promoted = promote and not failures
    if promoted:
        registry.promote(registry_root, name, version)
    return Published(version, promoted, failures,
                     {a: flag_advice(result.calibration, a, calibration_records) for a in target_fprs})


def report_file(directory: str, html: str) -> dict[str, str]:
    """Write ``report.html`` into a version folder; its checksum for the manifest."""
    import tensorflow as tf
    with tf.io.gfile.GFile(f"{directory}/report.html", "w") as f:
        f.write(html)
    return {"report.html": sha256_of(f"{directory}/report.html")}
