"""Input complexity: how many bits a lossless compressor needs for an image.

Likelihood-based scores mostly measure how much there is to explain.  A simple image
(little ink, flat background) gets a high likelihood and a small reconstruction error from
almost any model, a busy one the opposite (Serrà et al. 2020, "Input complexity and
out-of-distribution detection with likelihood-based generative models").  On MNIST a '1'
has about half the ink of the other digits, so a model trained without '1's still ranks
them as the most normal records.

Calibration therefore judges an image's scores against normal images *of the same
complexity* (``vigil.models.calibration``): each score is regressed on the compressed size over
calibration split A, and p-values and ``anomaly_score`` use the residual.  PNG is the
compressor because it is lossless, standard, and already how images travel; its size
barely depends on the model, so the adjustment needs no extra training.

The sizes are only comparable when the same encoder makes them: Pillow's PNG writer over
the zlib it was built with.  Another deflate implementation (zlib-ng, say) packs the
same pixels differently, which would move every adjusted score and with it the
false-positive rate.  So calibration records the encoder's sizes for a few fixed probe
images (``encoder_probe``), and a scoring machine whose encoder disagrees refuses the
model (``encoder_mismatch``) instead of scoring it quietly off its calibration.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

INPUT_BITS = "input_bits"      # the key the scores dicts carry it under
# Largest relative change in a probe image's size taken as the same encoder.
PROBE_TOLERANCE = 0.002


def input_bits(images: np.ndarray) -> np.ndarray:
    """PNG-compressed size in bits of each image in a ``(n, H, W, C)`` batch, C in {1, 3}.

    Pixel values are taken as 0..255 (decoded images are uint8; anything else is rounded
    and clipped), so the same picture has the same complexity however it arrived.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"images of shape {images.shape}; expected (n, H, W, 1 or 3)")
    if images.dtype != np.uint8:
        images = np.clip(np.rint(images), 0, 255).astype(np.uint8)
    out = np.empty(len(images), dtype=np.float64)
    for i, img in enumerate(images):
        buffer = io.BytesIO()
        gray = img.shape[-1] == 1
        picture = Image.fromarray(img[..., 0] if gray else img, "L" if gray else "RGB")
        picture.save(buffer, format="PNG")
        out[i] = 8.0 * buffer.tell()
    return out


def probe_images(shape: tuple[int, int, int]) -> np.ndarray:
    """Four fixed uint8 images of ``shape`` (H, W, C), from blank to busy.

    Integer arithmetic only (no random generator, whose streams may change between numpy
    releases), so every machine builds the very same pixels.
    """
    h, w, c = (int(v) for v in shape)
    i, j, k = np.meshgrid(np.arange(h), np.arange(w), np.arange(c), indexing="ij")
    disc = ((2 * i - h) ** 2 + (2 * j - w) ** 2) * 9 < 4 * min(h, w) ** 2
    texture = (i * 7919 + j * 104729 + k * 1237 + i * j * 31) % 256
    blank = np.zeros((h, w, c), dtype=np.int64)
    return np.stack([blank, disc * 255, np.where(disc, texture, 0), texture]).astype(np.uint8)


def encoder_probe(shape: tuple[int, int, int]) -> dict:
    """This machine's PNG encoder, and its sizes in bits for ``probe_images(shape)``."""
    from PIL import __version__ as pillow
    from PIL import features
    return {"encoder": f"Pillow {pillow}, zlib {features.version('zlib') or 'unknown'}",
            "shape": [int(v) for v in shape],
            "bits": input_bits(probe_images(shape)).tolist()}


def encoder_mismatch(recorded: dict) -> str | None:
    """Why this machine's PNG sizes are not the ones ``recorded`` (None when they are)."""
    here = encoder_probe(tuple(recorded["shape"]))
    then, now = np.asarray(recorded["bits"], np.float64), np.asarray(here["bits"], np.float64)
    if then.shape == now.shape and np.all(np.abs(now - then) <= PROBE_TOLERANCE * then):
        return None
    return (f"its scores are adjusted for PNG-compressed size, and this machine's encoder "
            f"({here['encoder']}) sizes the probe images at {now.astype(int).tolist()} bits "
            f"where training's ({recorded['encoder']}) gave {then.astype(int).tolist()}; "
            "install the Pillow build training used, or retrain on this machine")
