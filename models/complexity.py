"""Input complexity: how many bits a lossless compressor needs for an image.

Likelihood-based scores mostly measure how much there is to explain.  A simple image
(little ink, flat background) gets a high likelihood and a small reconstruction error from
almost any model, a busy one the opposite (Serrà et al. 2020, "Input complexity and
out-of-distribution detection with likelihood-based generative models").  On MNIST a '1'
has about half the ink of the other digits, so a model trained without '1's still ranks
them as the most normal records (mnist-anc digit 1: AUROC 0.09 for ``vae_log_px``).

Calibration therefore judges an image's scores against normal images *of the same
complexity* (``models.calibration``): each score is regressed on the compressed size over
calibration split A, and p-values and ``anomaly_score`` use the residual.  PNG is the
compressor because it is lossless, standard, and already how images travel; its size
barely depends on the model, so the adjustment needs no extra training.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

INPUT_BITS = "input_bits"      # the key the scores dicts carry it under


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
