"""Job specs: YAML files that describe a scheduled scoring or training job.

    kind: score                    # or: train
    inputs: ["data/incoming/{date}/*.tfrecord"]
    registry: ./models
    name: digits
    output: ./runs                 # score only; the run id is the date
    options: {target_fpr: 0.01}    # any option of `vigil score` / `vigil train`
    beam_args: [--runner, DataflowRunner, --project, my-project]
    roots: [/srv/vigil, /data]     # optional; default: the folder the job is launched from

``{date}`` in any string is replaced by the run date, so a re-run for the same date
replaces that date's run exactly. Specs are read with ``yaml.safe_load``; unknown keys,
oversize files and deep nesting are refused with the offending key named.

Every local path in a spec (inputs, registry, output) must resolve, after ``..`` and
symlinks, inside one of ``roots``; a spec cannot reach outside the folders it was
allowed, however its paths are spelled.  Remote URLs (gs://, s3://) are not confined.
"""
from __future__ import annotations

import datetime
import os
import re
from dataclasses import dataclass, field

import yaml

MAX_BYTES = 64 * 1024
MAX_DEPTH = 6
TOP_KEYS = {"kind", "inputs", "registry", "name", "output", "options", "beam_args", "description",
            "roots"}
# Keys of a spec's own (inputs, registry, name, output) or that the date sets (run_id, overwrite).
FIXED_BY_SPEC = {"inputs", "registry", "name", "output", "run_id", "overwrite", "train", "gate_margin"}


def allowed_options(kind: str) -> set[str]:
    """The ``options`` a job of ``kind`` takes: its config's fields, declared there once."""
    from dataclasses import fields
    if kind == "score":
        from vigil.pipeline.config import ScoreConfig
        return {f.name for f in fields(ScoreConfig)} - FIXED_BY_SPEC
    from vigil.jobs.train_config import TRAIN_CONFIG_KEYS, TrainJobConfig
    return ({f.name for f in fields(TrainJobConfig)} - FIXED_BY_SPEC) | set(TRAIN_CONFIG_KEYS)


class SpecError(ValueError):
    """A spec that cannot be run; the message names the file and the key."""


@dataclass(frozen=True)
class JobSpec:
    """A checked job spec: kind, inputs, registry, name, output, options and Beam arguments."""
    kind: str
    inputs: tuple[str, ...]
    registry: str
    name: str
    output: str | None = None
    options: dict = field(default_factory=dict)
    beam_args: tuple[str, ...] = ()


def _depth(node, level=0) -> int:
    if isinstance(node, dict):
        return max([_depth(v, level + 1) for v in node.values()] or [level + 1])
    if isinstance(node, list):
        return max([_depth(v, level + 1) for v in node] or [level + 1])
    return level


def _is_url(path: str) -> bool:
    return bool(re.match(r"^[a-z][a-z0-9+.-]*://", path))


def _normalise(path: str) -> str:
    """Local paths are normalised; URLs (gs://, s3://) are left as written."""
    return path if _is_url(path) else os.path.normpath(os.path.expanduser(path))


def _confine(spec_path: str, key: str, path: str, roots: list[str]) -> None:
    """Refuse a local path that resolves (through '..' and symlinks) outside every root.

    A glob is checked up to its first wildcard; the files it matches are checked again
    when read (``vigil.pipeline.readers``), so a symlink inside an input folder cannot escape.
    """
    if _is_url(path):
        return
    static = re.split(r"[*?\[{]", path, maxsplit=1)[0]
    real = os.path.realpath(static or ".")
    for root in roots:
        if os.path.commonpath([real, root]) == root:
            return
    raise SpecError(f"{spec_path}: {key} '{path}' resolves to {real}, outside the allowed roots "
                    f"({', '.join(roots)}); move it or add its folder to 'roots'")


def _fill(value, date: str):
    if isinstance(value, str):
        return value.replace("{date}", date)
    if isinstance(value, list):
        return [_fill(v, date) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, date) for k, v in value.items()}
    return value


def load_spec(path: str, date: str) -> JobSpec:
    """Read, validate and fill in a spec for one date (YYYY-MM-DD)."""
    try:
        if not re.match(r"^\d{4}-\d{2}-\d{2}$", date):
            raise ValueError(date)
        datetime.date.fromisoformat(date)
    except ValueError as exc:
        raise SpecError(f"--date {date!r}: expected a calendar date YYYY-MM-DD") from exc
    try:
        if os.path.getsize(path) > MAX_BYTES:
            raise SpecError(f"{path}: larger than {MAX_BYTES} bytes; not a job spec")
        with open(path) as f:
            doc = yaml.safe_load(f)
    except OSError as exc:
        raise SpecError(f"{path}: cannot read ({exc.strerror})") from exc
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from exc
    if not isinstance(doc, dict):
        raise SpecError(f"{path}: must be a mapping of keys")
    if _depth(doc) > MAX_DEPTH:
        raise SpecError(f"{path}: nested deeper than {MAX_DEPTH} levels")
    unknown = sorted(set(doc) - TOP_KEYS)
    if unknown:
        raise SpecError(f"{path}: unknown key '{unknown[0]}' (allowed: {', '.join(sorted(TOP_KEYS))})")
    kind = doc.get("kind")
    if kind not in ("score", "train"):
        raise SpecError(f"{path}: 'kind' must be score or train, not {kind!r}")
    for key in ("inputs", "registry", "name") + (("output",) if kind == "score" else ()):
        if not doc.get(key):
            raise SpecError(f"{path}: missing key '{key}'")
    options = doc.get("options") or {}
    if not isinstance(options, dict):
        raise SpecError(f"{path}: 'options' must be a mapping")
    bad = sorted(set(options) - allowed_options(kind))
    if bad:
        raise SpecError(f"{path}: unknown option 'options.{bad[0]}' for a {kind} job")
    inputs = doc["inputs"] if isinstance(doc["inputs"], list) else [doc["inputs"]]
    doc = _fill(doc, date)
    inputs = [_normalise(str(i)) for i in _fill(inputs, date)]
    registry = _normalise(str(doc["registry"]))
    output = _normalise(str(doc["output"])) if doc.get("output") else None
    roots = doc.get("roots") or [os.getcwd()]
    if not isinstance(roots, list) or not all(isinstance(r, str) and r for r in roots):
        raise SpecError(f"{path}: 'roots' must be a list of folders")
    roots = [os.path.realpath(_normalise(r)) for r in roots]
    options = _fill(options, date)
    calibration = options.get("calibration_inputs") or []
    if "calibration_inputs" in options:
        calibration = calibration if isinstance(calibration, list) else [calibration]
        options["calibration_inputs"] = calibration = [_normalise(str(c)) for c in calibration]
    for key, value in [*(("inputs", i) for i in inputs), ("registry", registry),
                       *((("output", output),) if output else ()),
                       *(("options.calibration_inputs", c) for c in calibration)]:
        _confine(path, key, value, roots)
    return JobSpec(kind, tuple(inputs), registry, str(doc["name"]), output,
                   options, tuple(str(a) for a in doc.get("beam_args") or ()))
