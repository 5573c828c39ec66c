"""Functional encoder / decoder / DAE networks: dense for features (linear when
ModelConfig.hidden is empty), convolutional for images.

The networks are plain functional models of built-in layers, so that a saved bundle loads
with ``safe_mode=True`` and no custom objects.  Heads that feed a log-probability are
float32 even under a mixed-precision policy.
"""
from __future__ import annotations

import math

import tf_keras as keras
from tf_keras import layers

from vigil.models.config import ModelConfig


def _downsampled(config: ModelConfig) -> tuple[int, int]:
    h, w, _ = config.input_shape
    factor = 2 ** len(config.hidden)
    return math.ceil(h / factor), math.ceil(w / factor)


def _encoder_trunk(x, config: ModelConfig):
    """x -> a flat representation."""
    if config.kind == "image":
        for filters in config.hidden:
            x = layers.Conv2D(filters, 3, strides=2, padding="same", activation="relu")(x)
        x = layers.Flatten()(x)
        return layers.Dense(4 * config.hidden[-1], activation="relu")(x)
    for width in config.hidden:
        x = layers.Dense(width, activation="relu")(x)
    return x


def _decoder_trunk(z, config: ModelConfig):
    """z -> a hidden tensor shaped like the input (before the output head)."""
    if config.kind == "image":
        h0, w0 = _downsampled(config)
        x = layers.Dense(4 * config.hidden[-1], activation="relu")(z)
        x = layers.Dense(h0 * w0 * config.hidden[-1], activation="relu")(x)
        x = layers.Reshape((h0, w0, config.hidden[-1]))(x)
        for filters in reversed(config.hidden):
            x = layers.Conv2DTranspose(filters, 3, strides=2, padding="same", activation="relu")(x)
        h, w, _ = config.input_shape
        extra_h, extra_w = h0 * 2 ** len(config.hidden) - h, w0 * 2 ** len(config.hidden) - w
        if extra_h or extra_w:
            x = layers.Cropping2D(((0, extra_h), (0, extra_w)))(x)
        return x
    for width in reversed(config.hidden):
        z = layers.Dense(width, activation="relu")(z)
    return z


def _head(x, config: ModelConfig, name: str, activation=None):
    """The per-dimension output head, in float32."""
    if config.kind == "image":
        return layers.Conv2D(config.input_shape[-1], 3, padding="same", activation=activation,
                             dtype="float32", name=name)(x)
    return layers.Dense(config.input_dim, activation=activation, dtype="float32", name=name)(x)


def build_encoder(config: ModelConfig) -> keras.Model:
    """x -> (z_mean, z_log_var) of the Gaussian posterior q(z|x)."""
    x = keras.Input(shape=config.input_shape, name="x")
    h = _encoder_trunk(x, config)
    z_mean = layers.Dense(config.latent_dim, dtype="float32", name="z_mean")(h)
    z_log_var = layers.Dense(config.latent_dim, dtype="float32", name="z_log_var")(h)
    return keras.Model(x, [z_mean, z_log_var], name="vae_encoder")


def build_decoder(config: ModelConfig) -> keras.Model:
    """z -> parameters of p(x|z): logits (bernoulli) or [mean, raw variance] (gaussian)."""
    z = keras.Input(shape=(config.latent_dim,), name="z")
    h = _decoder_trunk(z, config)
    if config.likelihood == "bernoulli":
        return keras.Model(z, _head(h, config, "logits"), name="vae_decoder")
    mean = _head(h, config, "mean")
    raw_var = _head(h, config, "raw_var")
    return keras.Model(z, [mean, raw_var], name="vae_decoder")


def build_dae(config: ModelConfig) -> keras.Model:
    """x -> reconstruction of x, through a deterministic bottleneck."""
    x = keras.Input(shape=config.input_shape, name="x")
    code = layers.Dense(config.latent_dim, name="code")(_encoder_trunk(x, config))
    activation = "sigmoid" if config.kind == "image" else None
    out = _head(_decoder_trunk(code, config), config, "reconstruction", activation)
    return keras.Model(x, out, name="dae")
