"""The model bundle: one immutable folder holding the two models and their manifest.

    vae_encoder.keras  vae_decoder.keras  dae.keras  manifest.json  COMPLETE

(an ensemble adds ``vae_encoder_1.keras  vae_decoder_1.keras  dae_1.keras`` and so on, one
triple per further member).

Loading is the security boundary of vigil: only the Keras v3 ``.keras`` zip is accepted
(tf-keras runs Lambda code from .h5 and SavedModel files even with ``safe_mode=True``),
every file's sha256 must match the manifest, and each model's config is scanned against
an allowlist of built-in layers *before* Keras deserialises anything.  Every failure is
a ``BundleError`` whose message is one line naming the version, the file and the problem.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import re
import tempfile
import weakref
import zipfile
from dataclasses import dataclass

import numpy as np
import tensorflow as tf
import tf_keras as keras

from vigil.models.calibration import Calibration
from vigil.models.complexity import INPUT_BITS, input_bits
from vigil.models.config import ModelConfig
from vigil.models.preprocessing import Preprocessing
from vigil.models.scoring import Member, Scorer
from vigil.schemas.manifest import check_model_manifest
from vigil.schemas.tables import SCORE_NAMES

MODEL_FILES = ("vae_encoder.keras", "vae_decoder.keras", "dae.keras")      # member 0
MANIFEST = "manifest.json"
COMPLETE = "COMPLETE"

# Layers a vigil network is made of; anything else in a config is refused.
ALLOWED_CLASSES = frozenset({
    "Functional", "Model", "InputLayer", "Dense", "Conv2D", "Conv2DTranspose", "Flatten",
    "Reshape", "Cropping2D", "Policy", "DTypePolicy", "GlorotUniform", "Zeros", "Ones",
    "HeNormal", "HeUniform", "RandomNormal", "RandomUniform", "Constant", "VarianceScaling",
    "L2", "L1", "L1L2", "Dropout", "BatchNormalization", "LayerNormalization",
    "__tuple__", "__numpy__", "__bytes__", "__typespec__", "__tensor__",
})
FORBIDDEN_KEYS = frozenset({"function", "function_type", "output_shape_type", "module_name"})


class BundleError(Exception):
    """A model version that cannot be used; the message says what to fix."""


def sha256_of(path: str) -> str:
    """The sha256 hex digest of a file (local or ``gs://``), read in chunks."""
    digest = hashlib.sha256()
    with tf.io.gfile.GFile(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _scan(node, where: str) -> None:
    """Refuse any config node that could run code on load."""
    if isinstance(node, dict):
        cls = node.get("class_name")
        module = node.get("module")
        if isinstance(module, str) and module.split(".")[0] not in ("keras", "tf_keras"):
            raise BundleError(f"{where}: config names module '{module}'"
                              + (f" (object '{cls}')" if isinstance(cls, str) else "")
                              + ", outside keras; refusing to load it")
        if isinstance(cls, str) and cls not in ALLOWED_CLASSES:
            raise BundleError(f"{where}: layer or object '{cls}' is not on vigil's allowlist")
        registered = node.get("registered_name")
        if isinstance(registered, str) and ">" in registered:
            raise BundleError(f"{where}: config names custom object '{registered}'")
        for key, value in node.items():
            if key in FORBIDDEN_KEYS:
                raise BundleError(f"{where}: config has code-carrying key '{key}'")
            _scan(value, where)
    elif isinstance(node, list):
        for value in node:
            _scan(value, where)


def load_keras_file(path: str, where: str) -> keras.Model:
    """Load one ``.keras`` file after checking its format and scanning its config."""
    if not path.endswith(".keras"):
        raise BundleError(f"{where}: only .keras files are loaded (got {os.path.basename(path)})")
    with tf.io.gfile.GFile(path, "rb") as f:
        data = f.read()
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            config = json.loads(archive.read("config.json"))
            names = set(archive.namelist())
    except (zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise BundleError(f"{where}: not a valid .keras archive ({exc})") from exc
    if "model.weights.h5" not in names:
        raise BundleError(f"{where}: archive has no model.weights.h5")
    _scan(config, where)
    # Load from a private local copy of the bytes we checked (no check-then-swap window).
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, "model.keras")
        with open(local, "wb") as f:
            f.write(data)
        try:
            return keras.models.load_model(local, safe_mode=True, compile=False)
        except Exception as exc:  # noqa: BLE001 - Keras raises many kinds; all mean "bad file"
            raise BundleError(f"{where}: Keras could not load it ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc


def member_files(index: int) -> tuple[str, str, str]:
    """The encoder, decoder and DAE file names of ensemble member ``index``."""
    if index == 0:
        return MODEL_FILES
    return tuple(name.replace(".keras", f"_{index}.keras") for name in MODEL_FILES)


def save_models(directory: str, members: list[Member]) -> dict[str, str]:
    """Write three ``.keras`` files per member; returns their sha256 by file name."""
    tf.io.gfile.makedirs(directory)
    names = []
    for index, member in enumerate(members):
        for name, model in zip(member_files(index), member):
            # Keras writes zips through the local filesystem; copy for remote registries.
            with tempfile.TemporaryDirectory() as tmp:
                local = os.path.join(tmp, name)
                model.save(local)
                tf.io.gfile.copy(local, f"{directory}/{name}", overwrite=True)
            names.append(name)
    return {name: sha256_of(f"{directory}/{name}") for name in names}


def complete_marker(directory: str) -> str | None:
    """The manifest sha256 a version's ``COMPLETE`` marker holds; None if it holds none.

    A missing, empty or malformed marker all mean the same: the version never finished
    publishing, so nothing in it is trusted (and no check is skipped).
    """
    path = f"{directory}/{COMPLETE}"
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path, "r") as f:
        text = f.read(200).strip()
    return text if re.fullmatch(r"[0-9a-f]{64}", text) else None


def read_manifest(directory: str, label: str) -> dict:
    """Read and check the manifest of a complete version (no model loading)."""
    expected = complete_marker(directory)
    if expected is None:
        raise BundleError(f"{label}: incomplete version (no valid {COMPLETE} marker); "
                          "it never finished publishing, choose another version")
    if not tf.io.gfile.exists(f"{directory}/{MANIFEST}"):
        raise BundleError(f"{label}/{MANIFEST}: missing; republish the version")
    if expected != sha256_of(f"{directory}/{MANIFEST}"):
        raise BundleError(f"{label}/{MANIFEST}: checksum does not match the {COMPLETE} marker "
                          "(the manifest changed after publishing); republish the version")
    try:
        with tf.io.gfile.GFile(f"{directory}/{MANIFEST}", "r") as f:
            manifest = json.load(f)
    except (tf.errors.NotFoundError, ValueError) as exc:
        raise BundleError(f"{label}/{MANIFEST}: unreadable ({type(exc).__name__})") from exc
    problems = check_model_manifest(manifest)
    if problems:
        raise BundleError(f"{label}/{MANIFEST}: " + "; ".join(problems))
    return manifest


def verify_files(directory: str, manifest: dict, label: str, members: int) -> None:
    """Every member's model files are recorded, and every recorded file has its sha256."""
    for name in (n for index in range(members) for n in member_files(index)):
        if name not in manifest["files"]:
            raise BundleError(f"{label}/{MANIFEST}: no checksum recorded for {name}")
    for name, expected in manifest["files"].items():
        path = f"{directory}/{name}"
        if not tf.io.gfile.exists(path):
            raise BundleError(f"{label}/{name}: file is missing")
        if sha256_of(path) != expected:
            raise BundleError(f"{label}/{name}: sha256 mismatch (file changed or truncated "
                              "after publishing); republish the version")


@dataclass
class Bundle:
    """A verified, loaded model version."""
    path: str
    label: str
    manifest: dict
    config: ModelConfig
    preprocessing: Preprocessing
    calibration: Calibration
    members: list[Member]

    @property
    def version(self) -> str:
        """The version's number, ``NNNN`` (``unsaved`` for a fitted, unpublished detector)."""
        return self.manifest["version"]

    def require_scorable(self) -> None:
        """Refuse to score on a machine whose PNG encoder sizes images unlike calibration's
        (images adjusted for complexity, ``vigil.models.complexity``): every p-value would be off."""
        mismatch = self.calibration.encoder_mismatch()
        if mismatch:
            raise BundleError(f"{self.label}: {mismatch}")

    def scorer(self, precision: str = "float32") -> Scorer:
        """A compiled ``Scorer`` for this version's members (refused if its calibration cannot apply here)."""
        self.require_scorable()
        return Scorer(self.members, self.config, seed=int(self.manifest["training"].get("seed", 0)),
                      precision=precision)

    def score_raw(self, scorer: Scorer, raw: np.ndarray) -> dict[str, np.ndarray]:
        """Decoded records -> the scorer's outputs, plus what the calibration needs with them."""
        scores = scorer.score_array(self.preprocessing.transform(raw))
        if self.calibration.needs_input_bits:
            scores[INPUT_BITS] = input_bits(raw)
        return scores

    def score_columns(self, scorer: Scorer, raw: np.ndarray, target_fpr: float) -> dict:
        """Decoded records -> the scores table's values (arrays over the records): the four
        scores and their p-values, ``anomaly_score`` and its p-value, the threshold at
        ``target_fpr``, the flag, and the top contributions (``top_index``/``top_contribution``)."""
        cal = self.calibration
        out = self.score_raw(scorer, raw)
        scores = {n: v.astype(np.float64) for n, v in out.items() if n in (*SCORE_NAMES, *cal.statistics)}
        result = {n: scores[n] for n in SCORE_NAMES}
        result.update(cal.pvalues(scores))
        anomaly_score = cal.anomaly_score(scores)
        threshold = cal.threshold(target_fpr)
        result["anomaly_score"] = anomaly_score
        result["anomaly_pvalue"] = cal.anomaly_pvalue(anomaly_score)
        result["threshold"] = np.full(len(raw), threshold)
        result["is_anomaly"] = anomaly_score > threshold
        result["top_index"] = out["top_index"]
        result["top_contribution"] = out["top_contribution"].astype(np.float64)
        return result


# Versions this process holds loaded, by folder.  An in-process run's worker asks for the
# version its launcher has just verified and loaded, and Keras's deserialisation is most
# of a load; the files are still checked against the manifest every time.  Weak values:
# a bundle nothing holds any more is forgotten.
_HELD: weakref.WeakValueDictionary[str, Bundle] = weakref.WeakValueDictionary()


def load_bundle(directory: str, label: str | None = None) -> Bundle:
    """Verify and load a model version; raises ``BundleError`` with one line on any fault.

    A version this process already holds loaded, with the same manifest and files, is
    shared rather than deserialised again.
    """
    label = label or directory
    manifest = read_manifest(directory, label)
    try:
        config = ModelConfig.from_dict(manifest["model_config"])
        preprocessing = Preprocessing.from_dict(manifest["preprocessing"])
        calibration = Calibration.from_dict(manifest["calibration"])
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"{label}/{MANIFEST}: bad model description ({exc})") from exc
    verify_files(directory, manifest, label, config.members)
    held = _HELD.get(directory)
    if held is not None and held.manifest == manifest:
        return held if held.label == label else dataclasses.replace(held, label=label)
    members = []
    for index in range(config.members):
        names = member_files(index)
        member = Member(*(load_keras_file(f"{directory}/{n}", f"{label}/{n}") for n in names))
        for name, model in ((names[0], member.encoder), (names[2], member.dae)):
            got = tuple(model.input_shape[1:])
            if got != tuple(config.input_shape):
                raise BundleError(f"{label}/{name}: input shape {got} differs from the "
                                  f"manifest's {tuple(config.input_shape)}")
        members.append(member)
    bundle = Bundle(directory, label, manifest, config, preprocessing, calibration, members)
    _HELD[directory] = bundle
    return bundle
