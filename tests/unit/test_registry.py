"""Registry versions, pointer, and the bundle's refusal of anything unsafe or damaged."""
from __future__ import annotations

import json
import os
import shutil
import threading
import time
import zipfile
from pathlib import Path

import pytest
import tf_keras as keras

from vigil.models import registry
from vigil.models.bundle import BundleError, load_bundle, load_keras_file


def _copy_registry(src: str, dst: Path) -> str:
    shutil.copytree(src, dst / "reg")
    return str(dst / "reg")


def _republish(reg: str):
    """publish(...) arguments that publish version 0001's files again."""
    d1 = registry.version_dir(reg, "cardio", "0001")
    manifest = json.loads(Path(d1, "manifest.json").read_text())

    def copy_files(directory):
        Path(directory).mkdir(parents=True)
        for name in manifest["files"]:
            shutil.copy(Path(d1, name), Path(directory, name))
        return manifest["files"]
    return copy_files, {k: v for k, v in manifest.items() if k not in ("version", "files")}


def test_publish_promote_rollback(features_registry, tmp_path):
    reg = _copy_registry(features_registry["registry"], tmp_path)
    assert registry.production_version(reg, "cardio") == "0001"
    v2 = registry.publish(reg, "cardio", *_republish(reg))
    assert v2 == "0002" and registry.list_versions(reg, "cardio") == ["0001", "0002"]
    registry.promote(reg, "cardio", v2)
    assert registry.production_version(reg, "cardio") == "0002"
    registry.rollback(reg, "cardio")
    assert registry.production_version(reg, "cardio") == "0001"
    with pytest.raises(registry.RegistryError, match="no earlier production"):
        registry.rollback(reg, "cardio")
    assert load_bundle(registry.version_dir(reg, "cardio", v2)).version == "0002"


def test_concurrent_publishers_get_distinct_versions(features_registry, tmp_path):
    reg = _copy_registry(features_registry["registry"], tmp_path)
    got = []
    threads = [threading.Thread(target=lambda: got.append(registry.publish(reg, "cardio", *_republish(reg))))
               for _ in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert sorted(got) == ["0002", "0003", "0004", "0005"]
    for v in got:
        load_bundle(registry.version_dir(reg, "cardio", v))


def test_a_publish_stopped_after_claiming_its_number_leaves_nothing(features_registry, tmp_path,
                                                                    monkeypatch):
    reg = _copy_registry(features_registry["registry"], tmp_path)
    versions = Path(reg, "cardio", "versions")
    before = sorted(p.name for p in versions.iterdir())

    def stop(path):
        raise KeyboardInterrupt
    monkeypatch.setattr(registry, "sha256_of", stop)         # between the manifest and COMPLETE
    with pytest.raises(KeyboardInterrupt):
        registry.publish(reg, "cardio", *_republish(reg))
    assert sorted(p.name for p in versions.iterdir()) == before
    monkeypatch.undo()
    assert registry.publish(reg, "cardio", *_republish(reg)) == "0002"


def test_a_publish_removes_staging_folders_a_killed_publisher_left(features_registry, tmp_path):
    reg = _copy_registry(features_registry["registry"], tmp_path)
    versions = Path(reg, "cardio", "versions")
    old, recent = versions / ".staging-killed", versions / ".staging-busy"
    for folder in (old, recent):
        folder.mkdir()
        (folder / "vae_encoder.keras").write_bytes(b"partial")
    two_days_ago = time.time() - 2 * 24 * 3600
    os.utime(old, (two_days_ago, two_days_ago))
    assert registry.publish(reg, "cardio", *_republish(reg)) == "0002"
    assert not old.exists() and recent.exists()       # another publisher may still be writing it


def test_a_version_held_loaded_is_shared_and_still_checked(features_registry, tmp_path):
    """The launcher of an in-process run and its worker load the same version: the second
    load shares the first's networks, but a file damaged in between is still refused."""
    reg = _copy_registry(features_registry["registry"], tmp_path)
    d = registry.version_dir(reg, "cardio", "0001")
    first = load_bundle(d, "cardio/0001")
    again = load_bundle(d, "cardio/0001")
    renamed = load_bundle(d, "prod")
    assert again is first and renamed.members is first.members and renamed.label == "prod"
    with open(Path(d) / "dae.keras", "ab") as f:
        f.write(b"x")
    with pytest.raises(BundleError, match="sha256 mismatch"):
        load_bundle(d, "cardio/0001")


@pytest.mark.parametrize("damage, message", [
    ("no_marker", "incomplete version"),
    ("checksum", "sha256 mismatch"),
    ("missing", "file is missing"),
    ("truncated", "sha256 mismatch"),
    ("member", "dae_2.keras: file is missing"),
])
def test_damaged_versions_are_refused_with_one_line(features_registry, tmp_path, damage, message):
    reg = _copy_registry(features_registry["registry"], tmp_path)
    d = Path(registry.version_dir(reg, "cardio", "0001"))
    if damage == "no_marker":
        (d / "COMPLETE").unlink()
    elif damage == "checksum":
        with open(d / "dae.keras", "ab") as f:
            f.write(b"x")
    elif damage == "missing":
        (d / "vae_decoder.keras").unlink()
    elif damage == "member":        # the third member of the table ensemble
        (d / "dae_2.keras").unlink()
    else:
        data = (d / "vae_encoder.keras").read_bytes()
        (d / "vae_encoder.keras").write_bytes(data[: len(data) // 2])
    with pytest.raises(BundleError, match=message) as err:
        registry.load(reg, "cardio")
    assert "\n" not in str(err.value) and "cardio/0001" in str(err.value)


def test_lambda_model_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    x = keras.Input((2,))
    y = keras.layers.Lambda(lambda t: t * 2)(x)
    model = keras.Model(x, y)
    path = tmp_path / "evil.keras"
    model.save(path)
    # Make the Lambda's code write a marker when deserialised.
    with zipfile.ZipFile(path) as z:
        files = {n: z.read(n) for n in z.namelist()}
    config = json.loads(files["config.json"])
    config["config"]["layers"][1]["config"]["function"] = {
        "class_name": "__lambda__", "config": {"code": f"open('{marker}', 'w').write('x')"}}
    files["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(path, "w") as z:
        for n, data in files.items():
            z.writestr(n, data)
    with pytest.raises(BundleError, match="Lambda"):
        load_keras_file(str(path), "evil.keras")
    assert not marker.exists()


def test_only_keras_format_is_loaded(tmp_path):
    with pytest.raises(BundleError, match="only .keras"):
        load_keras_file(str(tmp_path / "model.h5"), "model.h5")
    (tmp_path / "junk.keras").write_bytes(b"not a zip")
    with pytest.raises(BundleError, match="not a valid .keras archive"):
        load_keras_file(str(tmp_path / "junk.keras"), "junk.keras")


def test_missing_model_names_what_to_do(tmp_path):
    with pytest.raises(registry.RegistryError, match="no production version"):
        registry.resolve(str(tmp_path), "nothing")
    with pytest.raises(registry.RegistryError, match="letters, digits"):
        registry.resolve(str(tmp_path), "../escape")
