"""The model each kind gets without tuning: one default configuration per kind.

``vigil train`` and ``vigil.models.Detector`` both build their networks from here, so a
model trained from the command line and one fitted in a notebook are the same model.
The reasons behind each number and their measurements are in docs/design.md.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from vigil.models.config import FEATURE_TAIL, ModelConfig


@dataclass(frozen=True)
class ModelOptions:
    """What a user may set about the networks; None takes the kind's default."""
    latent_dim: int | None = None
    likelihood: str | None = None       # "gaussian" | "bernoulli"
    members: int | None = None          # VAE+DAE pairs whose scores are averaged


def image_filters(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The convolutional stages for images of ``shape`` (h, w, channels): their filters.

    Each stage halves the image, until its longer side is at most 8 pixels (never fewer
    than two stages); filters double from 32 up to 128.  The flattened map that the
    dense layers read stays at most 8 x 8 x 128 whatever the image size, so the networks'
    weights grow with the number of stages, not with the number of pixels.

    Example:
        >>> image_filters((28, 28, 1)), image_filters((128, 128, 3))
        ((32, 64), (32, 64, 128, 128))
    """
    stages = max(2, math.ceil(math.log2(max(shape[0], shape[1]) / 8)))
    return tuple(min(32 * 2 ** i, 128) for i in range(stages))


def default_model_config(kind: str, shape: tuple[int, ...], options: ModelOptions,
                         train_rows: int) -> ModelConfig:
    """Defaults that work without tuning on images and on tables.

    ``train_rows`` is the size of the split that fits the weights; tables with fewer of
    them than features get linear, untrimmed, cross-fitted models with a higher variance
    floor and log-scaled inputs.

    Example:
        >>> default_model_config("features", (21,), ModelOptions(), 900).members
        3
    """
    if kind == "image":
        # Scores are judged against images of the same complexity (vigil.models.complexity),
        # and anomaly_score is the DAE's surprise at its blurred residual: a misplaced edge
        # leaves a +/- pair the blur cancels, a missing or extra stroke a patch it keeps.
        # 16 importance samples: conv decoders dominate scoring cost.
        return ModelConfig("image", shape, latent_dim=options.latent_dim or 16,
                           hidden=image_filters(shape),
                           likelihood=options.likelihood or "bernoulli", n_recon_samples=16,
                           n_iwae_samples=16, combine="dae", dae_error_sigma=0.7,
                           adjust_complexity=True, members=options.members or 1)
    d = shape[0]
    width = 128 if d >= 32 else 64
    # Tables arrive unlabelled and contaminated: each batch's highest-loss 40% (after the
    # KL warm-up) does not train the models, so anomalies in the data are not learned as
    # normal (a trimmed likelihood).  Latent 32 whatever the width: the KL term switches
    # off what a table does not need.  Three members, because one training seed moves a
    # table's AUROC a lot and dense nets train in seconds.
    # With fewer training rows than features a nonlinear net can only memorise the rows:
    # linear networks (probabilistic PCA and a PCA residual), nothing trimmed (it would
    # starve them), a variance floor of 0.3 (per-feature variances from so few residuals
    # are mostly luck), a log scale past one robust unit (else a few features that spiked
    # in a normal row decide a 512-feature sum), and five cross-fitted members, since
    # holding 40% of ~160 rows out of training costs such tables the most.
    few_rows = train_rows < d
    return ModelConfig("features", shape, latent_dim=options.latent_dim or 32,
                       hidden=() if few_rows else (width, width // 2),
                       likelihood=options.likelihood or "gaussian",
                       min_scale=0.3 if few_rows else 0.03,
                       feature_tail=1.0 if few_rows else FEATURE_TAIL,
                       trim_fraction=0.0 if few_rows else 0.4,
                       members=options.members or (5 if few_rows else 3),
                       cross_fit=few_rows and (options.members or 5) > 1)
