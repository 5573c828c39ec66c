"""The model registry: numbered immutable versions and an atomic production pointer.

    <registry>/<name>/versions/0001/ ...   complete versions (see vigil.models.bundle)
    <registry>/<name>/versions/.staging-*  versions being written (ignored by readers)
    <registry>/<name>/production           JSON {"version", "previous": [...]}

Publishing writes the model files into a private staging folder, claims the next free
number by renaming the folder (a rename onto an existing version fails, so two
publishers never collide), writes the manifest and finally the ``COMPLETE`` marker that
holds the manifest's sha256.  Readers only see versions with that marker.  A publish
that stops (an error, Ctrl-C, SIGTERM) removes what it wrote; staging folders of a
process that was killed outright are removed by a later publish once they are a day
old.  The pointer is replaced by writing a temporary file and renaming it over the old one.
"""
from __future__ import annotations

import datetime as _dt
import json
import re
import time
import uuid

import tensorflow as tf

from vigil.models.bundle import (
    COMPLETE,
    MANIFEST,
    BundleError,
    complete_marker,
    load_bundle,
    read_manifest,
    sha256_of,
)

VERSION_RE = re.compile(r"^\d{4,}$")
STAGING_PREFIX = ".staging-"
# No publish writes for a day: a staging folder this old belongs to a process that died.
STALE_STAGING_SECONDS = 24 * 3600
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class RegistryError(Exception):
    """A registry operation that cannot be done; the message says why."""


def _model_dir(registry: str, name: str) -> str:
    if not NAME_RE.match(name):
        raise RegistryError(f"model name {name!r} must be letters, digits, '_', '.', '-'")
    return f"{registry.rstrip('/')}/{name}"


def _write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    with tf.io.gfile.GFile(tmp, "w") as f:
        f.write(text)
    tf.io.gfile.rename(tmp, path, overwrite=True)


def version_dir(registry: str, name: str, version: str) -> str:
    """The folder of a model version: ``<registry>/<name>/versions/NNNN``."""
    return f"{_model_dir(registry, name)}/versions/{normalise_version(version)}"


def normalise_version(version: str | int) -> str:
    """A version as its four-digit folder name (``3`` and ``"0003"`` alike); ``RegistryError`` if not a
    number."""
    text = str(version).strip()
    if not text.isdigit():
        raise RegistryError(f"version {version!r} is not a number")
    return f"{int(text):04d}"


def list_versions(registry: str, name: str, complete_only: bool = True) -> list[str]:
    """Version numbers, oldest first."""
    root = f"{_model_dir(registry, name)}/versions"
    if not tf.io.gfile.isdir(root):
        return []
    found = sorted(v.rstrip("/") for v in tf.io.gfile.listdir(root) if VERSION_RE.match(v.rstrip("/")))
    if complete_only:
        found = [v for v in found if complete_marker(f"{root}/{v}") is not None]
    return found


def list_models(registry: str) -> list[str]:
    """Names of the models in a registry (folders holding ``versions/``), sorted."""
    if not tf.io.gfile.isdir(registry):
        return []
    names = (n.rstrip("/") for n in tf.io.gfile.listdir(registry))
    return sorted(n for n in names if NAME_RE.match(n)
                  and tf.io.gfile.isdir(f"{registry.rstrip('/')}/{n}/versions"))


def read_pointer(registry: str, name: str) -> dict | None:
    """The production pointer, checked; None if there is none.  A malformed one fails."""
    path = f"{_model_dir(registry, name)}/production"
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path, "r") as f:
        text = f.read(1 << 16)
    try:
        pointer = json.loads(text)
    except ValueError:
        pointer = None
    if not (isinstance(pointer, dict) and isinstance(pointer.get("version"), str)
            and VERSION_RE.match(pointer["version"])
            and isinstance(pointer.get("previous", []), list)
            and all(isinstance(v, str) and VERSION_RE.match(v) for v in pointer.get("previous", []))):
        raise RegistryError(f"{path}: not a production pointer (expected a JSON object like "
                            '{"version": "0003", "previous": ["0002"]}); '
                            f"re-point it with 'vigil models promote --model-version N'")
    return pointer


def production_version(registry: str, name: str) -> str | None:
    """The version the production pointer names, or None when there is none yet."""
    pointer = read_pointer(registry, name)
    return pointer["version"] if pointer else None


def publish(registry: str, name: str, write_files, manifest: dict) -> str:
    """Publish a new version and return its number.

    ``write_files(directory) -> {file name: sha256}`` writes the model files; the
    manifest is completed with the version, creation time and those checksums.
    """
    root = f"{_model_dir(registry, name)}/versions"
    tf.io.gfile.makedirs(root)
    remove_stale_staging(root)
    staging = f"{root}/{STAGING_PREFIX}{uuid.uuid4().hex}"
    try:
        files = write_files(staging)
    except BaseException:
        # Nothing of a failed publish stays behind in the registry.
        if tf.io.gfile.exists(staging):
            tf.io.gfile.rmtree(staging)
        raise
    for _ in range(1000):
        existing = [v.rstrip("/") for v in tf.io.gfile.listdir(root) if VERSION_RE.match(v.rstrip("/"))]
        version = f"{max((int(v) for v in existing), default=0) + 1:04d}"
        try:
            tf.io.gfile.rename(staging, f"{root}/{version}", overwrite=False)
            break
        except (tf.errors.OpError, OSError):
            continue  # another publisher took this number; take the next
    else:
        raise RegistryError(f"{root}: could not claim a version number")
    directory = f"{root}/{version}"
    manifest = dict(manifest, name=name, version=version, files=files,
                    created_at=_dt.datetime.now(_dt.timezone.utc).isoformat())
    try:
        with tf.io.gfile.GFile(f"{directory}/{MANIFEST}", "w") as f:
            json.dump(manifest, f, indent=1, allow_nan=False)
        with tf.io.gfile.GFile(f"{directory}/{COMPLETE}", "w") as f:
            f.write(sha256_of(f"{directory}/{MANIFEST}") + "\n")
    except BaseException:
        # Never complete, never read: the number is free again.
        tf.io.gfile.rmtree(directory)
        raise
    return version


def remove_stale_staging(root: str, max_age: float = STALE_STAGING_SECONDS) -> list[str]:
    """Remove the staging folders in ``root`` (a model's ``versions/``) older than ``max_age``
    seconds, left by publishers that were killed; return their paths."""
    removed, now = [], time.time()
    for entry in tf.io.gfile.listdir(root):
        if not entry.startswith(STAGING_PREFIX):
            continue
        path = f"{root}/{entry.rstrip('/')}"
        try:
            if now - tf.io.gfile.stat(path).mtime_nsec / 1e9 > max_age:
                tf.io.gfile.rmtree(path)
                removed.append(path)
        except (tf.errors.OpError, OSError):
            continue        # gone already (another publisher swept it), or no stat on this store
    return removed


def promote(registry: str, name: str, version: str) -> dict:
    """Point production at a complete version; the old one is kept for rollback."""
    version = normalise_version(version)
    directory = version_dir(registry, name, version)
    try:
        read_manifest(directory, f"{name}/{version}")
    except BundleError as exc:
        raise RegistryError(f"cannot promote: {exc}") from exc
    try:
        pointer = read_pointer(registry, name) or {"version": None, "previous": []}
    except RegistryError:       # a damaged pointer: promoting is how it is repaired
        pointer = {"version": None, "previous": []}
    previous = list(pointer.get("previous", []))
    if pointer.get("version") and pointer["version"] != version:
        previous.append(pointer["version"])
    new = {"version": version, "previous": previous,
           "updated_at": _dt.datetime.now(_dt.timezone.utc).isoformat()}
    _write_atomic(f"{_model_dir(registry, name)}/production", json.dumps(new, indent=1))
    return new


def rollback(registry: str, name: str) -> dict:
    """Point production back at the version that was production before this one."""
    pointer = read_pointer(registry, name)
    if not pointer or not pointer.get("previous"):
        raise RegistryError(f"{name}: no earlier production version to roll back to")
    previous = list(pointer["previous"])
    version = previous.pop()
    new = {"version": version, "previous": previous,
           "updated_at": _dt.datetime.now(_dt.timezone.utc).isoformat()}
    _write_atomic(f"{_model_dir(registry, name)}/production", json.dumps(new, indent=1))
    return new


def resolve(registry: str, name: str, version: str | int | None = None) -> str:
    """The version to use: the one asked for, else production; checked to be complete."""
    if version is None:
        version = production_version(registry, name)
        if version is None:
            have = list_versions(registry, name)
            hint = f"; versions: {', '.join(have)} (promote one or pass --model-version)" if have \
                else "; train one with 'vigil train'"
            raise RegistryError(f"model '{name}' in {registry} has no production version{hint}")
    version = normalise_version(version)
    if not tf.io.gfile.isdir(version_dir(registry, name, version)):
        raise RegistryError(f"model '{name}' version {version} does not exist in {registry}")
    return version


def load(registry: str, name: str, version: str | int | None = None):
    """Resolve and load a version (a verified ``vigil.models.bundle.Bundle``)."""
    version = resolve(registry, name, version)
    return load_bundle(version_dir(registry, name, version), f"{name}/{version}")
