"""Configuration of the two models and of training, as explicit dataclasses."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields

LIKELIHOODS = ("gaussian", "bernoulli")
# Compute precisions of the VAE decoder when scoring (vigil.models.precision).
PRECISIONS = ("float32", "bfloat16")


class ConfigError(ValueError):
    """A configuration value is out of range or unknown: a usage error (the CLI exits 2)."""

def option(help: str, *, flag: str | None = None, low: float | None = None, high: float | None = None,
           open_low: bool = False, open_high: bool = False, choices: tuple[str, ...] | None = None,
           required: bool = False, parse=None) -> dict:
    """A field's command-line declaration: help, flag name (default: ``--field-name``;
    ``--a/--no-a`` for a switch), range (``low``/``high``, open or closed), choices, and
    ``parse``, which turns the command line's text into the field's value."""
    return {"help": help, "flag": flag, "low": low, "high": high, "open_low": open_low,
            "open_high": open_high, "choices": choices, "required": required, "parse": parse}


def check_ranges(config) -> None:
    """Refuse a value outside its field's declared range or choices, naming its flag."""
    for f in fields(config):
        meta, value = f.metadata, getattr(config, f.name)
        if not meta or value is None or isinstance(value, (bool, tuple)):
            continue
        flag = (meta["flag"] or "--" + f.name.replace("_", "-")).split("/")[0]
        if meta["choices"] and value not in meta["choices"]:
            raise ConfigError(f"{flag} {value!r}: expected one of {', '.join(meta['choices'])}")
        low, high = meta["low"], meta["high"]
        if low is not None and (value <= low if meta["open_low"] else value < low):
            raise ConfigError(f"{flag} {value:g}: must be {'>' if meta['open_low'] else '>='} {low:g}")
        if high is not None and (value >= high if meta["open_high"] else value > high):
            raise ConfigError(f"{flag} {value:g}: must be {'<' if meta['open_high'] else '<='} {high:g}")


# Examples each image model sees at most when TrainConfig.max_examples is None (about 40
# epochs of 3,000 images): image validation loss creeps down long after AUROC stops
# improving.  Tables train with dense nets and stop early.
IMAGE_MAX_EXAMPLES = 130_000
# Robust units past which a table's inputs grow logarithmically (vigil.models.preprocessing).
FEATURE_TAIL = 20.0
KINDS = ("image", "features")
COMBINE_RULES = ("mean", "max_model", "dae")
# The DAE's squared error after Gaussian smoothing of the residual (images with
# ModelConfig.dae_error_sigma > 0).  Not an output column: anomaly_score takes the DAE's
# surprise from it; scorers and calibration carry it under this key.
DAE_SMOOTH_ERROR = "dae_smooth_error"


class DataError(ValueError):
    """The data given cannot be trained on or scored (too few records, wrong shape, a
    non-finite value); the message names the value."""


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the VAE and the DAE, and how they are scored."""
    kind: str                       # "image" or "features"
    input_shape: tuple[int, ...]    # (D,) or (H, W, C)
    latent_dim: int = 16
    hidden: tuple[int, ...] = (256, 128)    # dense widths (features; () = linear networks)
                                            # / conv filters (images; at least one)
    likelihood: str = "gaussian"
    min_scale: float = 0.03         # floor on the decoder's per-dimension std (gaussian)
    beta: float = 1.0               # KL weight once warm-up is over
    kl_warmup_epochs: int = 5
    dae_noise_std: float = 0.2      # gaussian corruption of DAE inputs (training only)
    dae_mask_prob: float = 0.1      # masking corruption of DAE inputs (training only)
    trim_fraction: float = 0.0      # drop this share of highest-loss rows per batch
    n_recon_samples: int = 16       # L: posterior samples for the reconstruction probability
    n_iwae_samples: int = 64        # K: importance samples for log p(x)
    top_k: int = 5                  # per-record explanation size
    combine: str = "mean"           # anomaly_score: "mean" of the four surprises,
                                    # "max_model": the larger of the VAE's and the DAE's,
                                    # or "dae": the DAE's alone
    adjust_complexity: bool = False  # images: judge scores against normal images of the
                                     # same compressed size (vigil.models.complexity)
    members: int = 1                # VAE+DAE pairs trained from different initial weights
                                    # on the same split; scores are their mean
    cross_fit: bool = False         # members train on different folds instead, each
                                    # calibrated on the rows it did not see (few-row tables)
    dae_error_sigma: float = 0.0    # images: anomaly_score judges the DAE by its residual
                                    # smoothed with a Gaussian of this std (pixels); 0 = MSE
    feature_tail: float | None = FEATURE_TAIL   # features: |z| past which inputs grow
                                                # logarithmically; None = linear

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ConfigError(f"kind={self.kind!r}; expected one of {KINDS}")
        if self.likelihood not in LIKELIHOODS:
            raise ConfigError(f"likelihood={self.likelihood!r}; expected one of {LIKELIHOODS}")
        if self.kind == "image" and len(self.input_shape) != 3:
            raise ConfigError(f"image input_shape={self.input_shape}; expected (H, W, C)")
        if self.kind == "image" and not self.hidden:
            raise ConfigError("image hidden=(); convolutional networks need at least one layer")
        if self.kind == "features" and len(self.input_shape) != 1:
            raise ConfigError(f"features input_shape={self.input_shape}; expected (D,)")
        for name in ("latent_dim", "n_recon_samples", "n_iwae_samples", "top_k", "members"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)}; must be >= 1")
        if not 0.0 <= self.trim_fraction < 0.5:
            raise ConfigError(f"trim_fraction={self.trim_fraction}; must be in [0, 0.5)")
        if self.combine not in COMBINE_RULES:
            raise ConfigError(f"combine={self.combine!r}; expected one of {COMBINE_RULES}")
        if self.adjust_complexity and self.kind != "image":
            raise ConfigError("adjust_complexity=True needs kind='image' (it compresses images)")
        if self.dae_error_sigma < 0 or (self.dae_error_sigma and self.kind != "image"):
            raise ConfigError(f"dae_error_sigma={self.dae_error_sigma}; must be >= 0, and 0 "
                             "unless kind='image' (it smooths over pixel neighbours)")
        if self.min_scale <= 0:
            raise ConfigError(f"min_scale={self.min_scale}; must be > 0")
        if self.cross_fit and self.members < 2:
            raise ConfigError(f"cross_fit=True with members={self.members}; it needs >= 2 folds")
        if self.feature_tail is not None and not self.feature_tail > 0:
            raise ConfigError(f"feature_tail={self.feature_tail}; must be > 0 or None")

    @property
    def input_dim(self) -> int:
        """The number of values in one record (features, or pixels times channels)."""
        n = 1
        for s in self.input_shape:
            n *= s
        return n

    def to_dict(self) -> dict:
        """The manifest's ``model_config`` entry."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        """Read back a manifest's ``model_config`` entry."""
        d = dict(d)
        d["input_shape"] = tuple(d["input_shape"])
        d["hidden"] = tuple(d["hidden"])
        return cls(**d)


@dataclass(frozen=True)
class TrainConfig:
    """How the models are fitted and calibrated."""
    epochs: int = field(default=60, metadata=option(
        "Most passes over the training rows (early stopping ends sooner).", low=1))
    # per model: caps epochs at max_examples / train rows (never below 10)
    max_examples: int | None = field(default=None, metadata=option(
        "Examples each model sees at most (caps epochs, never below 10); 0 = no cap. Default: "
        f"{IMAGE_MAX_EXAMPLES} for images, no cap for tables.", low=0))
    batch_size: int = field(default=128, metadata=option(
        "Records per gradient step (smaller on small tables, so each epoch has steps).", low=1))
    learning_rate: float = 1e-3
    patience: int = 8
    seed: int = field(default=0, metadata=option("Seed of the splits and of the initial weights."))
    val_fraction: float = 0.1           # early stopping and promotion gates
    calib_fraction: float = 0.15        # per-score conformal calibration
    combined_calib_fraction: float = 0.15   # calibration of the combined statistic itself
    target_fprs: tuple[float, ...] = field(default=(0.01,), metadata=option(
        "Calibrated false-positive rate (repeatable).", flag="--target-fpr", low=0, high=0.5,
        open_low=True, open_high=True))
    device: str = field(default="auto", metadata=option(
        "auto: every GPU found (MirroredStrategy for several), else the CPU.",
        choices=("auto", "cpu", "gpu")))
    mixed_precision: bool = field(default=False, metadata=option("float16 on GPUs, bfloat16 on CPUs."))
    max_calibration_rows: int = 20000
    verbose: int = 1

    def __post_init__(self):
        object.__setattr__(self, "target_fprs", tuple(self.target_fprs))
        check_ranges(self)
        held_out = self.val_fraction + self.calib_fraction + self.combined_calib_fraction
        if not 0 < held_out < 0.9:
            raise ConfigError(f"held-out fractions sum to {held_out:.2f}; must be in (0, 0.9)")
        for fpr in self.target_fprs:
            if not 0 < fpr < 0.5:
                raise ConfigError(f"--target-fpr {fpr}: must be in (0, 0.5)")

    def to_dict(self) -> dict:
        """The manifest's ``training.config`` entry."""
        return dataclasses.asdict(self)
