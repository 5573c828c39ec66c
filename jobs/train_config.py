"""``vigil train``'s settings, each declared once with its command-line option.

Light on purpose (no TensorFlow, no Beam): the command line builds its options from these
fields at start-up, and job specs check their keys against them.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields

from vigil.models.config import LIKELIHOODS, TrainConfig, check_ranges, option
from vigil.pipeline.config import FORMAT_HELP, FORMATS, ID_HELP, absolute_uri

# The training settings a job spec or the command line may set: TrainConfig's declared fields.
TRAIN_CONFIG_KEYS = tuple(f.name for f in fields(TrainConfig) if f.metadata)


def comma_list(text: str) -> tuple[str, ...]:
    """``a, b,c`` -> ("a", "b", "c")."""
    return tuple(v.strip() for v in text.split(",") if v.strip())


def image_size(text: str) -> tuple[int, int]:
    """``28x28`` -> (28, 28); ValueError for anything else."""
    h, w = (int(v) for v in text.lower().split("x"))
    if h < 1 or w < 1:
        raise ValueError(text)
    return h, w


@dataclass(frozen=True)
class TrainJobConfig:
    """Everything one ``vigil train`` needs: inputs and how to read them, model options, gates,
    training.  Each field declares its command-line option (``vigil.models.config.option``)."""
    inputs: tuple[str, ...] = field(metadata=option("Input glob (repeatable).", flag="--input",
                                                    required=True))
    registry: str = field(metadata=option("Model registry root (local path or gs://).", required=True))
    name: str = field(metadata=option("Model name in the registry.", required=True))
    format: str = field(default="auto", metadata=option(FORMAT_HELP, choices=FORMATS))
    id_column: str = field(default="id", metadata=option(ID_HELP))
    feature_columns: tuple[str, ...] = field(default=(), metadata=option(
        "Comma-separated (default: all numeric); a column of number lists (an embedding) "
        "gives a feature per element.", parse=comma_list))
    label_column: str | None = field(default=None, metadata=option(
        "Train only on rows whose label is normal."))
    normal_values: tuple[str, ...] = field(default=(), metadata=option(
        "Comma-separated normal label values.", parse=comma_list))
    image_size: tuple[int, int] | None = field(default=None, metadata=option(
        "HxW (default: the first image's).", parse=image_size))
    channels: int | None = field(default=None, metadata=option(
        "Image channels the model takes: 1 (grayscale) or 3 (RGB). Default: the first image's.",
        low=1, high=3))
    latent_dim: int | None = field(default=None, metadata=option(
        "Size of the VAE's latent space. Default: 16 for images, 32 for tables.", low=1))
    likelihood: str | None = field(default=None, metadata=option(
        "The VAE decoder's distribution. Default: bernoulli for images, gaussian for tables.",
        choices=LIKELIHOODS))
    members: int | None = field(default=None, metadata=option(
        "VAE+DAE pairs trained from different initial weights; scores are their mean. Default: 3 "
        "for tables (5, each trained without its own fold, on tables with fewer rows than "
        "features), 1 for images.", low=1))
    calibration_inputs: tuple[str, ...] = field(default=(), metadata=option(
        "Glob of records known to be normal (repeatable): thresholds and gates come from them, "
        "and the training input only trains.", flag="--calibration-input"))
    promote: bool = field(default=True, metadata=option(
        "Make the version production when its gates pass.", flag="--promote/--no-promote"))
    max_records: int = field(default=2_000_000, metadata=option(
        "Normal records read for training at most (training holds them in memory).", low=1))
    gate_margin: float = 0.02
    allow_unflaggable: bool = field(default=False, metadata=option(
        "Promote even if the calibration data is too small to flag anything at any --target-fpr."))
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self):
        check_ranges(self)
        # Resolved once: the manifest records where the data was, from any folder.
        for name in ("inputs", "calibration_inputs"):
            object.__setattr__(self, name, tuple(absolute_uri(p) for p in getattr(self, name)))
        object.__setattr__(self, "registry", absolute_uri(self.registry) if self.registry else "")
