"""Images in every awkward form: converted by a documented rule, or dead-lettered with a reason.

One real run over an image folder and TFRecord shards, against the 28x28 grayscale
MNIST model.  Rules (``pipeline/decode.py`` and the README): content decides the format
(PNG or JPEG only), the pixel cap is checked from the header, EXIF orientation is applied,
16-bit is scaled to 8-bit, colour becomes luminance, alpha is dropped, CMYK goes through
RGB, other sizes are resized.  Identical pixels give an identical (deterministic)
``dae_recon_error``, which is how conversions are checked below.
"""
from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image

from tests import helpers


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def image_run(images_registry, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad_images")
    d = tmp / "imgs"
    d.mkdir()
    digits, labels = helpers.mnist(30, offset=1080)
    gray = Image.fromarray(digits[0], "L")
    files = {
        "gray.png": _encode(gray, "PNG"),
        "rgb.png": _encode(Image.merge("RGB", [gray] * 3), "PNG"),
        "rgba.png": _encode(Image.merge("RGBA", [gray] * 3 + [Image.new("L", (28, 28), 128)]), "PNG"),
        "deep16.png": _encode(Image.fromarray(digits[0].astype(np.uint16) * 257), "PNG"),
        "cmyk.jpg": _encode(Image.fromarray(digits[1], "L").convert("CMYK"), "JPEG", quality=95),
        "big.png": _encode(gray.resize((56, 56), Image.NEAREST), "PNG"),
        "png-named.jpg": _encode(Image.fromarray(digits[2], "L"), "PNG"),
        "jpeg-named.png": _encode(Image.fromarray(digits[3], "L"), "JPEG"),
        "anim.png": _encode(Image.fromarray(digits[4], "L"), "GIF", save_all=True,
                            append_images=[Image.fromarray(digits[5], "L")]),
        "truncated.png": _encode(Image.fromarray(digits[6], "L"), "PNG")[:60],
        "garbage.jpg": b"\xff\xd8 this is not a JPEG at all " * 4,
        "zero.png": b"", "zero.jpg": b"",
        "bomb.png": _encode(Image.new("L", (8000, 8000)), "PNG"),
        "noise.png": _encode(Image.fromarray(np.random.default_rng(0).integers(
            0, 256, (1100, 1100, 3), dtype=np.uint8), "RGB"), "PNG"),
    }
    # EXIF orientation 6 (display rotated 90 degrees clockwise): stored turned the other way.
    exif = Image.Exif()
    exif[0x0112] = 6
    upright = Image.fromarray(digits[7], "L")
    files["upright.png"] = _encode(upright, "PNG")
    files["exif.png"] = _encode(upright.transpose(Image.Transpose.ROTATE_90), "PNG", exif=exif)
    files["README"] = b"digits exported for the nightly run\n"   # no format in its name
    for name, data in files.items():
        (d / name).write_bytes(data)
    outside = tmp / "elsewhere.png"
    outside.write_bytes(files["gray.png"])
    os.symlink(outside, d / "escape.png")
    # TFRecord shards: good records, ids that are missing or not UTF-8, an empty shard.
    t = tmp / "shards"
    recs = [helpers.example(f"t-{i}".encode(), helpers.png(digits[10 + i]), int(labels[10 + i]))
            for i in range(10)]
    recs += [helpers.example(None, helpers.png(digits[20]), 1),
             helpers.example(b"\xc3\x28", helpers.png(digits[21]), 1)]
    helpers.write_tfrecord(t / "part-0.tfrecord", recs)
    (t / "zero.tfrecord").write_bytes(b"")
    out = tmp / "out"
    res = helpers.score_cli(images_registry, [f"{d}/*", f"{t}/*.tfrecord"], out,
                            "--max-record-bytes", "2000000", "--max-bad-fraction", "0.6")
    assert res.exit_code == 0, res.output + repr(res.exception)
    scores, dead, manifest = helpers.read_run(f"{out}/run1")
    by_id = {r["id"]: r for r in scores.to_pylist()}
    return {"run": f"{out}/run1", "dir": str(d), "shards": str(t), "by_id": by_id,
            "dead": dead.to_pylist(), "manifest": manifest}


def _check(run):
    """The invariant, folder and shards each counted with their own glob root."""
    d, t = run["dir"], run["shards"]
    inputs = sorted(f"{d}/{n}" for n in os.listdir(d)) + sorted(f"{t}/{n}" for n in os.listdir(t))
    helpers.check_invariant(run["run"], inputs, root=d, refused=(f"{d}/escape.png", f"{d}/README"))


def _reason(run, name):
    found = [r for r in run["dead"] if r["id"] == name or r["source"].endswith("/" + name)]
    assert len(found) == 1, (name, found)
    return found[0]["reason"]


def test_channels_and_bit_depth_are_converted(image_run):
    by_id = image_run["by_id"]
    base = by_id["gray.png"]["dae_recon_error"]
    for name in ("rgb.png", "rgba.png", "deep16.png"):
        assert by_id[name]["dae_recon_error"] == pytest.approx(base, abs=1e-9), name
    assert "cmyk.jpg" in by_id and "big.png" in by_id
    _check(image_run)


def test_exif_orientation_is_applied(image_run):
    by_id = image_run["by_id"]
    assert by_id["exif.png"]["dae_recon_error"] == pytest.approx(
        by_id["upright.png"]["dae_recon_error"], abs=1e-9)
    _check(image_run)


def test_content_not_extension_decides_the_format(image_run):
    assert {"png-named.jpg", "jpeg-named.png"} <= set(image_run["by_id"])
    assert _reason(image_run, "anim.png") == "undecodable_image"
    _check(image_run)


@pytest.mark.parametrize("name,reason", [
    ("truncated.png", "undecodable_image"), ("garbage.jpg", "undecodable_image"),
    ("zero.png", "empty_file"), ("zero.jpg", "empty_file"), ("zero.tfrecord", "empty_file"),
    ("bomb.png", "image_too_large"), ("noise.png", "record_too_large"),
    ("escape.png", "outside_root"), ("README", "unknown_format"),
])
def test_bad_images_are_dead_lettered_with_a_reason(image_run, name, reason):
    assert _reason(image_run, name) == reason
    if reason == "record_too_large":     # an oversize image file is not even read (nor hashed)
        [info] = [i for i in image_run["manifest"]["inputs"] if i["uri"].endswith("/" + name)]
        assert info["sha256"] is None
    _check(image_run)


def test_bad_ids_in_shards(image_run):
    reasons = sorted(r["reason"] for r in image_run["dead"] if r["source"].endswith("part-0.tfrecord"))
    assert reasons == ["missing_id", "non_utf8_id"]
    assert sum(1 for i in image_run["by_id"] if i.startswith("t-")) == 10
    _check(image_run)


def test_no_payload_in_dead_letters(image_run):
    for r in image_run["dead"]:
        assert "not a JPEG" not in r["message"] and len(r["message"]) < 400
    _check(image_run)


@pytest.mark.parametrize("shape", [(28, 28, 1), (128, 96, 3)])
def test_a_large_jpeg_decodes_at_reduced_scale_to_the_same_pixels(shape):
    from vigil.models.preprocessing import Preprocessing
    from vigil.pipeline.decode import DecodeSpec, decode
    from vigil.pipeline.records import RawRecord
    h, w, channels = shape
    yy, xx = np.mgrid[0:1200, 0:1600] / 1200.0
    photo = np.stack([0.5 + 0.3 * np.sin(20 * xx) * np.cos(15 * yy), 0.5 + 0.2 * np.cos(9 * xx),
                      0.4 + 0.3 * np.sin(7 * yy)], -1)
    upright = Image.fromarray((photo * 255).astype(np.uint8), "RGB")
    exif = Image.Exif()
    exif[0x0112] = 6                     # a portrait camera photo, stored turned
    files = {"upright": _encode(upright, "JPEG", quality=90),
             "turned": _encode(upright.transpose(Image.Transpose.ROTATE_90), "JPEG", quality=90,
                               exif=exif)}
    spec = DecodeSpec("image", shape)
    # Decoded in full and then resized, the rule before reduced-scale decoding.
    full = upright.convert("L" if channels == 1 else "RGB").resize((w, h), Image.BILINEAR)
    want = np.asarray(full, np.int16).reshape(shape)
    for name, data in files.items():
        got = decode(RawRecord(name, "photos/", data), spec)
        assert got.x.shape == shape, name
        # The JPEG's own DCT scaling differs from a full decode by rounding, not by content.
        assert np.abs(got.x.astype(np.int16) - want).max() <= 3, name
    # Models trained before the rule recorded no jpeg_dct_scaling: they decode in full, as
    # their training did, to the same pixels.
    old = Preprocessing.from_dict({"kind": "image", "input_shape": list(shape)})
    assert old.jpeg_dct_scaling is False and Preprocessing.for_images(*shape).jpeg_dct_scaling
    assert Preprocessing.from_dict(Preprocessing.for_images(*shape).to_dict()).jpeg_dct_scaling
    full_spec = DecodeSpec("image", shape, jpeg_dct_scaling=old.jpeg_dct_scaling)
    got = decode(RawRecord("upright", "photos/", files["upright"]), full_spec)
    expected = Image.open(io.BytesIO(files["upright"])).convert("L" if channels == 1 else "RGB")
    assert np.array_equal(got.x, np.asarray(expected.resize((w, h), Image.BILINEAR)).reshape(shape))
