"""Photos larger than the model, as a camera writes them: trained at `--image-size`, scored
and reported without a false alarm about their size."""
from __future__ import annotations

import io
import json

import numpy as np
from click.testing import CliRunner
from PIL import Image

from vigil.jobs.cli import cli


def _photo(rng: np.random.Generator, h: int, w: int) -> bytes:
    yy, xx = np.mgrid[0:h, 0:w] / h
    phase = rng.uniform(0, 6.28)
    base = 0.5 + 0.3 * np.sin(6 * xx + phase) * np.cos(4 * yy)
    rgb = np.stack([base, 0.8 * base + 0.1, 1 - base], -1) + rng.normal(0, 0.02, (h, w, 3))
    buf = io.BytesIO()
    Image.fromarray((np.clip(rgb, 0, 1) * 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def test_photos_trained_at_a_smaller_size_keep_their_shape_check(tmp_path):
    rng = np.random.default_rng(0)
    for folder, n in (("train", 120), ("today", 20)):
        (tmp_path / folder).mkdir()
        for i in range(n):
            (tmp_path / folder / f"p{i:03d}.jpg").write_bytes(_photo(rng, 96, 128))
    (tmp_path / "today" / "odd.jpg").write_bytes(_photo(rng, 64, 64))
    registry = str(tmp_path / "reg")
    res = CliRunner().invoke(cli, ["train", "--input", str(tmp_path / "train" / "*.jpg"),
                                   "--image-size", "24x32", "--registry", registry, "--name", "photos",
                                   "--epochs", "2", "--target-fpr", "0.05", "--allow-unflaggable"])
    assert res.exit_code == 0, res.output
    manifest = json.loads((tmp_path / "reg" / "photos" / "versions" / "0001" / "manifest.json").read_text())
    assert manifest["input"]["shape"] == [24, 32, 3]
    assert manifest["training"]["source_shapes"] == ["96x128x3"]
    assert manifest["preprocessing"]["jpeg_dct_scaling"] is True

    res = CliRunner().invoke(cli, ["score", "--input", str(tmp_path / "today" / "*.jpg"),
                                   "--registry", registry, "--name", "photos",
                                   "--output", str(tmp_path / "runs"), "--run-id", "r"])
    assert res.exit_code == 0, res.output
    assert "read 21, scored 21, dead-lettered 0" in res.output
    checks = json.loads((tmp_path / "runs" / "r" / "report" / "validation.json").read_text())["checks"]
    [shape] = [c for c in checks if c["column"] == "shape"]
    # One photo in 21 of another size is within the check's 95%; the rest are as trained.
    assert shape["success"], shape
    assert "shapes the training images had" in shape["why"]
