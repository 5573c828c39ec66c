"""The formats of ``manifest.json``: one in every model version, one in every scoring run.

Both are plain JSON objects.  ``check_*`` return the list of problems (empty when valid)
so that callers can name every missing key in one error line.
"""
from __future__ import annotations

import math

MODEL_MANIFEST_FORMAT = 1
RUN_MANIFEST_FORMAT = 1

# key -> type of the value (a tuple means any of them)
MODEL_MANIFEST_KEYS: dict[str, type | tuple] = {
    "format": int,
    "name": str,
    "version": str,
    "created_at": str,
    "code_version": str,
    "input": dict,           # kind ("image"|"features"), shape, feature_columns, channels
    "preprocessing": dict,   # see vigil.models.preprocessing.Preprocessing.to_dict
    "model_config": dict,    # see vigil.models.config.ModelConfig
    "training": dict,        # config, seed, epochs run, history, device/strategy
    "metrics": dict,         # held-out losses and calibration checks
    "calibration": dict,     # see vigil.models.calibration.Calibration.to_dict
    "profile": dict,         # data profile from which input expectations are derived
    "files": dict,           # file name -> sha256 of every other file in the version
}

RUN_MANIFEST_KEYS: dict[str, type | tuple] = {
    "format": int,
    "run_id": str,
    "model": dict,          # registry, name, version, manifest sha256
    "inputs": list,         # [{uri, bytes, sha256}]
    "counts": dict,         # read, scored, dead_lettered, anomalies
    "thresholds": dict,
    "options": dict,
    "timings": dict,
}


def _check(doc: object, keys: dict[str, type | tuple], what: str) -> list[str]:
    if not isinstance(doc, dict):
        return [f"{what} is not a JSON object"]
    problems = []
    for key, typ in keys.items():
        if key not in doc:
            problems.append(f"{what} lacks key '{key}'")
        elif not isinstance(doc[key], typ):
            problems.append(f"{what} key '{key}' is {type(doc[key]).__name__}, "
                            f"expected {getattr(typ, '__name__', typ)}")
    return problems


def strict_json(obj):
    """The same document with every non-finite float (inf, NaN) as None.

    Manifests are strict JSON: JavaScript's JSON.parse and jq refuse ``Infinity``, and a
    value that does not exist (a threshold out of reach) is null.
    """
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def check_model_manifest(doc: object) -> list[str]:
    """Problems with a model version's manifest; [] when it is valid."""
    problems = _check(doc, MODEL_MANIFEST_KEYS, "model manifest")
    if not problems and doc["format"] != MODEL_MANIFEST_FORMAT:
        problems.append(f"model manifest format {doc['format']} is not "
                        f"{MODEL_MANIFEST_FORMAT}; retrain or upgrade vigil")
    return problems


def check_run_manifest(doc: object) -> list[str]:
    """Problems with a scoring run's manifest; [] when it is valid."""
    problems = _check(doc, RUN_MANIFEST_KEYS, "run manifest")
    if not problems and doc["format"] != RUN_MANIFEST_FORMAT:
        problems.append(f"run manifest format {doc['format']} is not {RUN_MANIFEST_FORMAT}")
    return problems
