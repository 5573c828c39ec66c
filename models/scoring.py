"""One compiled function that scores a batch with both models.

For a record x with posterior q(z|x) = N(mu, sigma^2) and S = max(L, K) samples
z_s = mu + sigma * eps_s (one batched decoder call for all of them):

    vae_recon_logprob = log (1/L) sum_l p(x|z_l)                       (An & Cho 2015)
    vae_elbo          = (1/S) sum_s log p(x|z_s) - KL(q(z|x) || p(z))   (KL in closed form)
    vae_log_px        = log (1/K) sum_k p(x|z_k) p(z_k) / q(z_k|x)       (IWAE, >= ELBO in expectation)
    dae_recon_error   = mean_d (x_d - dae(x)_d)^2

Images with ``ModelConfig.dae_error_sigma`` > 0 also get ``dae_smooth_error``, the DAE's
squared error after Gaussian smoothing of the residual (``losses.smoothed_squared_error``):
not an output column, but what ``anomaly_score`` judges the DAE by.

With an ensemble (``ModelConfig.members`` > 1: the same networks trained from different
initial weights on the same split), each score is the mean of the members' scores: the
members disagree most where the data is thin, so the mean ranks more steadily than any
one of them.

Every record is scored with the same noise eps (S, latent_dim), drawn once per Scorer from
the model's seed: common random numbers.  A record's score is then a fixed function of the
record, the same in any batch, order, worker or re-run; each score is still an unbiased
Monte Carlo estimate, and the comparison between two records, which is what ranking and
calibration use, carries no sampling noise of its own (docs/design.md).
"""
from __future__ import annotations

import logging
from typing import NamedTuple, Sequence

import numpy as np
import tensorflow as tf
import tf_keras as keras

from vigil.models import losses
from vigil.models.config import DAE_SMOOTH_ERROR, PRECISIONS, ConfigError, ModelConfig
from vigil.models.devices import BFLOAT16_FLAGS, cpu_has_bfloat16, visible_gpus
from vigil.models.precision import lowered

LOG = logging.getLogger("vigil.score")


def _not_scorer_retracing(record: logging.LogRecord) -> bool:
    """False for TensorFlow's "triggered tf.function retracing" warning about a Scorer.

    Each Scorer traces its own networks once; TensorFlow counts traces by code object
    across instances, so a process that loads a sixth model (a notebook, a training job
    comparing with production, a benchmark worker) is warned of a retracing loop that
    is not there.  Every other warning passes.
    """
    message = record.getMessage()
    return not ("triggered tf.function retracing" in message and "Scorer._score_batch" in message)



# Rows per call of the compiled scoring function.  A table row is a few MFLOP spread over
# many small kernels, whose launch cost a larger block shares out; an image is a few hundred
# MFLOP, and a larger block only pads small batches more.
TABLE_BLOCK = 256
IMAGE_BLOCK = 64
# The decoder's last maps hold block x samples x pixels x filters floats, so larger images
# score in smaller blocks: at most this many input values a block (64 MNIST digits, 64
# 32x32 RGB images, 5 of 128x128 RGB, 1 from 256x256 RGB up).
IMAGE_BLOCK_VALUES = 262_144


def scoring_block(config: ModelConfig) -> int:
    """Records per call of the compiled scoring function for a model of ``config``.

    Fixed per model, so that a record's scores do not depend on the batch it came in.

    Example:
        >>> [scoring_block(ModelConfig("image", shape)) for shape in ((28, 28, 1), (128, 128, 3))]
        [64, 5]
    """
    if config.kind == "features":
        return TABLE_BLOCK
    return max(1, min(IMAGE_BLOCK, IMAGE_BLOCK_VALUES // config.input_dim))


def common_noise(seed: int, n_samples: int, latent_dim: int) -> tf.Tensor:
    """(1, n_samples, latent_dim) standard normals, the same for every record a model scores.

    Drawn in antithetic pairs (eps, -eps), interleaved so that every even prefix (the L
    samples of the reconstruction probability, the K of the IWAE) is balanced: a shared
    draw whose mean is not zero would shift each record's estimate along its own gradient,
    a bias that differs between records; a balanced one has no such first-order term.
    """
    half = tf.random.stateless_normal([(n_samples + 1) // 2, latent_dim], seed=[int(seed), 0])
    pairs = tf.reshape(tf.stack([half, -half], axis=1), [-1, latent_dim])
    return pairs[None, :n_samples]


class Member(NamedTuple):
    """One trained VAE (encoder, decoder) and DAE: a member of the ensemble."""
    encoder: keras.Model
    decoder: keras.Model
    dae: keras.Model


class Scorer:
    """Scores batches of preprocessed records with the members' VAEs and DAEs.

    Call it with a float32 array shaped ``(batch,) + input_shape``; it returns numpy
    arrays: the four scores (batch,), and ``top_index`` / ``top_contribution`` (batch,
    top_k): the input dimensions (flat feature index or pixel position) with the largest
    VAE negative log-likelihood.

    ``precision="bfloat16"`` computes the VAE's decoder in bfloat16
    (``vigil.models.precision``): several times faster on CPUs with AMX, at VAE scores
    within a small tolerance of float32's (docs/benchmarks.md); the DAE's scores, and so
    images' ``anomaly_score``, are float32's bits.
    """

    def __init__(self, members: Sequence[Member], config: ModelConfig, seed: int = 0,
                 block: int | None = None, precision: str = "float32"):
        if not members:
            raise ValueError("a Scorer needs at least one member")
        if precision not in PRECISIONS:
            raise ConfigError(f"precision={precision!r}: expected one of {', '.join(PRECISIONS)}")
        self.members = [Member(*m) for m in members]
        self.precision = precision
        if precision == "bfloat16" and not visible_gpus() and cpu_has_bfloat16() is False:
            LOG.warning("--precision bfloat16 on a CPU without bfloat16 instructions (%s): "
                        "expect it to score slower than float32", " or ".join(BFLOAT16_FLAGS))
        # The decoder runs once per posterior sample, so it is what a lower precision speeds
        # up; the encoder, the DAE (images' anomaly_score) and the score math stay float32.
        self._decoders = [(lambda z, d=m.decoder: d(z, training=False)) if precision == "float32"
                          else lowered(m.decoder, tf.bfloat16) for m in self.members]
        self.config = config
        self.seed = int(seed)
        # Every call runs on exactly ``block`` rows (the last block padded): matrix kernels
        # pick different code paths for different row counts, which would change a
        # record's last bits with the size of the batch it arrived in.
        self.block = int(block or scoring_block(config))
        # Attached where scoring starts (once per process), not when the module is imported.
        if _not_scorer_retracing not in tf.get_logger().filters:
            tf.get_logger().addFilter(_not_scorer_retracing)
        self._eps = common_noise(self.seed, max(config.n_recon_samples, config.n_iwae_samples),
                                 config.latent_dim)
        # A fixed signature: any batch size reuses one trace.  Every branch and loop in the
        # scoring code is over Python values (members, settings), so AutoGraph, which
        # rewrites the source of the function and of every layer it calls, has nothing to
        # convert and would only double the first call's time (the same graph either way).
        self._score = tf.function(self._score_batch, input_signature=[
            tf.TensorSpec([None, *config.input_shape], tf.float32),
        ], autograph=False)

    def _score_batch(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        cfg = self.config
        per_member = [self._member_scores(m, d, x, self._eps)
                      for m, d in zip(self.members, self._decoders)]
        mean = {k: tf.add_n([p[k] for p in per_member]) / len(per_member) for k in per_member[0]}
        # Reduced in float64: a float32 mean's last bit depends on the row's memory position.
        contribution = tf.cast(mean.pop("contribution"), tf.float32)                # (B, D)
        top = tf.math.top_k(contribution, k=min(cfg.top_k, cfg.input_dim))
        return {**mean, "top_index": top.indices, "top_contribution": top.values}

    def _member_scores(self, member: Member, decoder, x: tf.Tensor, eps: tf.Tensor) -> dict[str, tf.Tensor]:
        """One member's four scores and its per-dimension contributions (float64)."""
        cfg = self.config
        n_samples = max(cfg.n_recon_samples, cfg.n_iwae_samples)
        batch = tf.shape(x)[0]
        x_flat = losses.flatten(x)

        z_mean, z_log_var = member.encoder(x, training=False)
        z = z_mean[:, None, :] + tf.exp(0.5 * z_log_var)[:, None, :] * eps
        outputs = decoder(tf.reshape(z, [-1, cfg.latent_dim]))
        x_rep = tf.repeat(x_flat, n_samples, axis=0)                               # (B*S, D)
        ll_dim = tf.reshape(losses.recon_log_prob(x_rep, outputs, cfg.likelihood, cfg.min_scale),
                            [batch, n_samples, -1])                                 # (B, S, D)
        ll = tf.reduce_sum(ll_dim, axis=-1)                                         # (B, S)

        L, K = cfg.n_recon_samples, cfg.n_iwae_samples
        log_prior = -0.5 * tf.reduce_sum(losses.LOG_2PI + tf.square(z), axis=-1)
        log_q = losses.log_normal(z, z_mean[:, None, :], z_log_var[:, None, :])
        dae_image = member.dae(x, training=False)
        scores = {
            "vae_recon_logprob": losses.log_mean_exp(ll[:, :L], axis=1),
            "vae_elbo": tf.reduce_mean(ll, axis=1) - losses.kl_to_standard_normal(z_mean, z_log_var),
            "vae_log_px": losses.log_mean_exp(ll[:, :K] + log_prior[:, :K] - log_q[:, :K], axis=1),
            "dae_recon_error": tf.reduce_mean(tf.square(x_flat - losses.flatten(dae_image)), axis=-1),
            "contribution": -tf.reduce_mean(tf.cast(ll_dim[:, :L, :], tf.float64), axis=1),
        }
        if cfg.dae_error_sigma:
            scores[DAE_SMOOTH_ERROR] = losses.smoothed_squared_error(x, dae_image, cfg.dae_error_sigma)
        return scores

    def __call__(self, x: np.ndarray) -> dict[str, np.ndarray]:
        x = np.asarray(x, dtype=np.float32)
        if x.shape[1:] != tuple(self.config.input_shape):
            raise ValueError(f"batch shape {x.shape[1:]} does not match the model's input "
                             f"{tuple(self.config.input_shape)}")
        parts = []
        for start in range(0, len(x), self.block):
            xb = x[start:start + self.block]
            n = len(xb)
            if n < self.block:
                xb = np.concatenate([xb, np.zeros((self.block - n, *xb.shape[1:]), np.float32)])
            out = self._score(tf.constant(xb))
            parts.append({k: v.numpy()[:n] for k, v in out.items()})
        if not parts:
            raise ValueError("empty batch")
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def reconstruct(self, x: np.ndarray) -> np.ndarray:
        """The first member's VAE reconstruction at the posterior mean (for pictures, not scores)."""
        first = self.members[0]
        z_mean, _ = first.encoder(np.asarray(x, np.float32), training=False)
        out = first.decoder(z_mean, training=False)
        mean = tf.sigmoid(out) if self.config.likelihood == "bernoulli" else out[0]
        return mean.numpy().reshape(np.shape(x))

    def score_array(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Score any number of records (block by block); {} for none."""
        return self(x) if len(x) else {}
