"""Decode and validate raw records into model-shaped arrays, or dead-letter them.

Image conversion rules (documented in the README):
* only PNG and JPEG are decoded, whatever the file extension says; anything else
  (GIF, BMP, garbage, truncated bytes) is ``undecodable_image``;
* the pixel count is checked from the header, before any pixel is decoded;
* EXIF orientation is applied; 16-bit images are scaled to 8 bits (value / 257);
* channels: grayscale models take luminance (ITU-R 601-2) of colour images, RGB models
  replicate grayscale; alpha is dropped; CMYK is converted to RGB first;
* images whose size differs from the model's are resized (bilinear); a JPEG of at least
  twice the model's size is first decoded at a reduced scale by its own DCT (models
  trained before this rule decode in full).
Feature rules: exactly the model's number of features, every value finite.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from vigil.models.preprocessing import JPEG_DCT_SCALING
from vigil.pipeline.records import DeadLetter, RawRecord, RecordBlock, ScoringInput, record_dead_letter


@dataclass(frozen=True)
class DecodeSpec:
    """How records become model inputs: the kind, the model's input shape, the pixel and byte caps."""
    kind: str                        # "image" | "features"
    input_shape: tuple[int, ...]
    max_pixels: int = 50_000_000
    max_record_bytes: int = 64 << 20
    feature_names: tuple[str, ...] = ()     # tables: a dead letter names the bad value's column
    # Decode large JPEGs at reduced scale, as training does now; scoring passes what the
    # model's Preprocessing recorded (False for models trained before the rule).
    jpeg_dct_scaling: bool = JPEG_DCT_SCALING


def decode(record: RawRecord, spec: DecodeSpec) -> ScoringInput | DeadLetter:
    """A raw record -> (id, uint8 image or float64 features) or a dead letter."""
    if record.id is None:
        if record.id_bytes is not None:
            return record_dead_letter(record, "decode", "non_utf8_id", "the id is not valid UTF-8")
        return record_dead_letter(record, "decode", "missing_id", "the record has no id")
    if record.nbytes > spec.max_record_bytes:
        return record_dead_letter(record, "decode", "record_too_large", _too_large(record.nbytes, spec))
    if spec.kind == "image":
        return _decode_image(record, spec)
    return _decode_features(record, spec)


def _decode_features(record: RawRecord, spec: DecodeSpec) -> ScoringInput | DeadLetter:
    if record.value is None:
        return record_dead_letter(record, "decode", "wrong_shape", "the record has no features")
    try:
        x = np.asarray(record.value, dtype=np.float64)
    except (TypeError, ValueError):
        return record_dead_letter(record, "decode", "non_numeric_feature",
                                  "a feature value is not a number")
    if x.shape != tuple(spec.input_shape):
        return record_dead_letter(record, "decode", "wrong_shape",
                                  f"{x.size} features, the model expects {spec.input_shape[0]}")
    if not np.all(np.isfinite(x)):
        return record_dead_letter(record, "decode", "non_finite_feature", _non_finite(x, spec))
    return ScoringInput(record.id, x, record.source, record.labels)


def decode_rows(ids: list, x: np.ndarray, source: str, labels: dict[str, list],
                spec: DecodeSpec) -> tuple[RecordBlock | None, list[DeadLetter]]:
    """Rows of one file's table at once, by ``decode``'s rules: (the good rows, a dead letter per bad row).

    ``ids`` holds a str per row, None where the id is missing, or bytes where it is not
    UTF-8; ``x`` is float64 (rows, features), already the model's width.  The checks run
    over the whole array; only bad rows cost Python work.
    """
    nbytes = x.shape[1] * x.itemsize
    finite = np.isfinite(x).all(axis=1)
    good = finite & np.fromiter((isinstance(i, str) for i in ids), bool, len(ids))
    if nbytes > spec.max_record_bytes:
        good[:] = False
    dead = []
    for r in np.flatnonzero(~good):
        rid = ids[r]
        named = RawRecord(rid if isinstance(rid, str) else None, source, None,
                          id_bytes=rid if isinstance(rid, bytes) else None, nbytes=nbytes)
        if named.id is None:
            dead.append(record_dead_letter(named, "decode", "non_utf8_id", "the id is not valid UTF-8")
                        if named.id_bytes is not None else
                        record_dead_letter(named, "decode", "missing_id", "the record has no id"))
        elif nbytes > spec.max_record_bytes:
            dead.append(record_dead_letter(named, "decode", "record_too_large", _too_large(nbytes, spec)))
        else:
            dead.append(record_dead_letter(named, "decode", "non_finite_feature", _non_finite(x[r], spec)))
    if not good.any():
        return None, dead
    keep = np.flatnonzero(good)
    return RecordBlock([ids[r] for r in keep], x[keep], [source] * len(keep),
                       {k: [v[r] for r in keep] for k, v in labels.items()}), dead


def _too_large(nbytes: int, spec: DecodeSpec) -> str:
    return f"{nbytes} bytes is over the cap of {spec.max_record_bytes}"


def _non_finite(x: np.ndarray, spec: DecodeSpec) -> str:
    j = int(np.argmin(np.isfinite(x)))
    name = f" ('{spec.feature_names[j]}')" if j < len(spec.feature_names) else ""
    return f"feature {j}{name} is {x[j]}"


def _decode_image(record: RawRecord, spec: DecodeSpec) -> ScoringInput | DeadLetter:
    height, width, channels = spec.input_shape
    if not record.value:
        return record_dead_letter(record, "decode", "undecodable_image", "no image bytes")
    try:
        img = Image.open(io.BytesIO(record.value))
        if img.format not in ("PNG", "JPEG"):
            return record_dead_letter(record, "decode", "undecodable_image",
                                      f"format {img.format} is not PNG or JPEG")
        w, h = img.size
        if w * h > spec.max_pixels:
            return record_dead_letter(record, "decode", "image_too_large",
                                      f"{w}x{h} pixels is over the cap of {spec.max_pixels}")
        if img.format == "JPEG" and spec.jpeg_dct_scaling:
            # A JPEG can decode at 1/2, 1/4 or 1/8 scale inside its DCT, several times faster
            # for a camera photo scored at a fraction of its size.  Both sides at least the
            # model's longer side, so any EXIF rotation still leaves enough pixels to resize.
            side = max(width, height)
            img.draft(img.mode, (side, side))
        img.load()
        img = ImageOps.exif_transpose(img)
        img = _to_channels(img, channels)
        if img is None:
            return record_dead_letter(record, "decode", "wrong_channels",
                                      f"cannot convert this image to {channels} channels")
        if img.size != (width, height):
            img = img.resize((width, height), Image.BILINEAR)
        x = np.asarray(img, dtype=np.uint8).reshape(height, width, channels)
    except Image.DecompressionBombError as exc:
        # vigil's own cap is checked from the header; PIL refuses (at open) images over
        # twice its MAX_IMAGE_PIXELS, which vigil leaves as the user's process has it.
        return record_dead_letter(record, "decode", "image_too_large", str(exc)[:200])
    except Exception as exc:  # noqa: BLE001 - PIL raises many kinds for bad bytes
        return record_dead_letter(record, "decode", "undecodable_image",
                                  f"{type(exc).__name__}: {str(exc)[:200]}")
    return ScoringInput(record.id, x, record.source, record.labels)


def source_shape(value: bytes) -> str:
    """An encoded image's stored shape, ``HxWxC`` from its header (C as stored: RGBA is 4),
    or ``undecodable``; what the run report's input check compares with training's."""
    try:
        img = Image.open(io.BytesIO(value))
    except Exception:  # noqa: BLE001 - undecodable images are dead letters already
        return "undecodable"
    channels = {"L": 1, "I;16": 1, "I": 1, "RGB": 3, "RGBA": 4, "CMYK": 4}.get(img.mode, 0)
    return f"{img.size[1]}x{img.size[0]}x{channels}"


def _to_channels(img: Image.Image, channels: int) -> Image.Image | None:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(np.clip(np.round(arr / 257.0), 0, 255).astype(np.uint8), "L")
    if img.mode == "CMYK":
        img = img.convert("RGB")
    if channels == 1:
        return img.convert("L")
    if channels == 3:
        return img.convert("RGB")
    return None
