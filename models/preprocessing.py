"""The transform from decoded records to model inputs, fitted at training time.

It is stored in the bundle's manifest so that scoring applies exactly the transform the
models were trained with.  Features are centred and scaled robustly (median and IQR, so
that contamination in the training data does not set the scale), and values beyond
``tail`` = 20 robust units grow only logarithmically: spiky features (mostly constant,
with rare huge values) otherwise reach z of thousands, and a Gaussian decoder trained on
them diverges to NaN (MVTec embeddings).  A much tighter tail hides real anomalies in
heavy-tailed tables.  The squashing is monotone and unbounded, so a more extreme value
still looks more anomalous.
Tables with fewer training rows than features take ``tail`` = 1 (``ModelConfig.feature_tail``),
a signed log past one robust unit: a score summed over hundreds of features whose tails
were seen in a hundred rows is otherwise decided by whichever few spiked.  Images are
resized and channel-converted at decode time and scaled to [0, 1] here.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vigil.models.config import FEATURE_TAIL

# How training decodes JPEGs now: at reduced scale when the image is at least twice the
# model's size (models trained before this rule record nothing and decode in full).
JPEG_DCT_SCALING = True


@dataclass
class Preprocessing:
    """How decoded records become model inputs: pixels scaled to [0, 1], or features robustly scaled per
    column."""
    kind: str                                  # "image" | "features"
    input_shape: tuple[int, ...]
    feature_columns: tuple[str, ...] = ()      # features: column order the model expects
    center: np.ndarray | None = None
    scale: np.ndarray | None = None
    clip: float = 1e4                          # keeps float32 math finite on wild inputs
    tail: float | None = None                  # |z| beyond this grows as log (None: linear)
    # Images: large JPEGs were decoded at reduced scale in their DCT (vigil.pipeline.decode);
    # scoring must decode as training did, since the complexity adjustment reads the
    # images' PNG sizes, which move with pixel rounding.  Manifests without it: False.
    jpeg_dct_scaling: bool = False

    @classmethod
    def fit_features(cls, x: np.ndarray, feature_columns: list[str],
                     tail: float | None = FEATURE_TAIL) -> "Preprocessing":
        """Robust per-column scaling (median, quartiles) fitted on training rows."""
        x = np.asarray(x, dtype=np.float64)
        center = np.median(x, axis=0)
        q75, q25 = np.percentile(x, [75, 25], axis=0)
        scale = (q75 - q25) / 1.349             # IQR of a standard normal is 1.349
        std = x.std(axis=0)
        scale = np.where(scale > 1e-12, scale, std)
        scale = np.where(scale > 1e-12, scale, 1.0)
        return cls("features", (x.shape[1],), tuple(feature_columns), center, scale, tail=tail)

    @classmethod
    def for_images(cls, height: int, width: int, channels: int) -> "Preprocessing":
        """Images of height x width x channels, pixels scaled to [0, 1]."""
        return cls("image", (height, width, channels), jpeg_dct_scaling=JPEG_DCT_SCALING)

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Decoded records (uint8 images or float features) -> float32 model inputs."""
        if self.kind == "image":
            return np.asarray(x, dtype=np.float32) / 255.0
        with np.errstate(over="ignore", invalid="ignore"):   # clipped just below
            z = (np.asarray(x, dtype=np.float64) - self.center) / self.scale
        z = np.clip(z, -self.clip, self.clip)
        if self.tail is not None:
            excess = np.maximum(np.abs(z) - self.tail, 0.0)
            z = np.where(excess > 0, np.sign(z) * (self.tail + np.log1p(excess)), z)
        return z.astype(np.float32)

    def to_dict(self) -> dict:
        """The manifest's ``preprocessing`` entry."""
        d = {"kind": self.kind, "input_shape": list(self.input_shape),
             "feature_columns": list(self.feature_columns), "clip": self.clip, "tail": self.tail}
        if self.kind == "features":
            d["center"] = self.center.tolist()
            d["scale"] = self.scale.tolist()
        else:
            d["pixel_scale"] = "uint8 / 255"
            d["jpeg_dct_scaling"] = self.jpeg_dct_scaling
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessing":
        """Read back a manifest's ``preprocessing`` entry."""
        center = np.asarray(d["center"]) if "center" in d else None
        scale = np.asarray(d["scale"]) if "scale" in d else None
        return cls(d["kind"], tuple(d["input_shape"]), tuple(d.get("feature_columns", ())),
                   center, scale, d.get("clip", 1e4), d.get("tail"),
                   bool(d.get("jpeg_dct_scaling", False)))
