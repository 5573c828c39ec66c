"""The likelihood and KL terms of the VAE, per record and per dimension.

Everything is computed in float32 on flattened inputs (batch, D), whatever the model's
compute dtype, so that mixed precision never touches a log-probability.
"""
from __future__ import annotations

import math

import tensorflow as tf

LOG_2PI = math.log(2.0 * math.pi)


def flatten(x: tf.Tensor) -> tf.Tensor:
    """(batch, ...) -> (batch, D) in float32."""
    return tf.reshape(tf.cast(x, tf.float32), [tf.shape(x)[0], -1])


def decoder_log_var(raw: tf.Tensor, min_scale: float) -> tf.Tensor:
    """Per-dimension log-variance with a floor: var = min_scale^2 + softplus(raw)."""
    return tf.math.log(min_scale ** 2 + tf.nn.softplus(tf.cast(raw, tf.float32)))


def gaussian_log_prob(x: tf.Tensor, mean: tf.Tensor, log_var: tf.Tensor) -> tf.Tensor:
    """log N(x; mean, exp(log_var)) per dimension."""
    return -0.5 * (LOG_2PI + log_var + tf.square(x - mean) * tf.exp(-log_var))


def bernoulli_log_prob(x: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """log Bernoulli(x; sigmoid(logits)) per dimension, for x in [0, 1]."""
    return -tf.nn.sigmoid_cross_entropy_with_logits(labels=x, logits=logits)


def recon_log_prob(x_flat: tf.Tensor, outputs, likelihood: str, min_scale: float) -> tf.Tensor:
    """log p(x|z) per dimension, (batch, D), from the decoder's outputs."""
    if likelihood == "bernoulli":
        return bernoulli_log_prob(x_flat, flatten(outputs))
    mean, raw = outputs
    return gaussian_log_prob(x_flat, flatten(mean), decoder_log_var(flatten(raw), min_scale))


def kl_to_standard_normal(z_mean: tf.Tensor, z_log_var: tf.Tensor) -> tf.Tensor:
    """KL(N(mean, exp(log_var)) || N(0, I)) in closed form, per record."""
    return 0.5 * tf.reduce_sum(tf.exp(z_log_var) + tf.square(z_mean) - 1.0 - z_log_var, axis=-1)


def log_normal(z: tf.Tensor, mean: tf.Tensor, log_var: tf.Tensor) -> tf.Tensor:
    """log N(z; mean, diag exp(log_var)), summed over the last axis."""
    return tf.reduce_sum(gaussian_log_prob(z, mean, log_var), axis=-1)


def log_mean_exp(values: tf.Tensor, axis: int) -> tf.Tensor:
    """log(mean(exp(values))) without overflow."""
    n = tf.cast(tf.shape(values)[axis], values.dtype)
    return tf.reduce_logsumexp(values, axis=axis) - tf.math.log(n)


def gaussian_kernel_1d(sigma: float) -> tf.Tensor:
    """Normalised Gaussian weights over [-ceil(3 sigma), ceil(3 sigma)]."""
    radius = max(1, math.ceil(3.0 * sigma))
    offsets = tf.range(-radius, radius + 1, dtype=tf.float32)
    weights = tf.exp(-0.5 * tf.square(offsets / sigma))
    return weights / tf.reduce_sum(weights)


def smoothed_squared_error(x: tf.Tensor, reconstruction: tf.Tensor, sigma: float) -> tf.Tensor:
    """Mean over pixels of the squared residual after Gaussian smoothing, per image.

    ``x`` and ``reconstruction`` are (batch, H, W, C).  A reconstruction that misplaces an
    edge by a pixel leaves a +/- pair that smoothing cancels; a stroke that is missing or
    extra leaves a same-sign patch that smoothing keeps.  Zero padding: images are
    compared inside their frame.
    """
    residual = tf.cast(x, tf.float32) - tf.cast(reconstruction, tf.float32)
    channels = residual.shape[-1]
    kernel = gaussian_kernel_1d(sigma)
    rows = tf.tile(tf.reshape(kernel, [-1, 1, 1, 1]), [1, 1, channels, 1])
    cols = tf.tile(tf.reshape(kernel, [1, -1, 1, 1]), [1, 1, channels, 1])
    smooth = tf.nn.depthwise_conv2d(residual, rows, [1, 1, 1, 1], "SAME")
    smooth = tf.nn.depthwise_conv2d(smooth, cols, [1, 1, 1, 1], "SAME")
    return tf.reduce_mean(tf.square(flatten(smooth)), axis=-1)
