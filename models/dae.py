"""The denoising autoencoder: corrupt in training, reconstruct the clean input.

Corruption is gaussian noise plus random masking (both configurable) and happens only in
``train_step``; scoring reconstructs the clean record, so the reconstruction error
measures distance from what the model learned, not from the noise.
"""
from __future__ import annotations

import tensorflow as tf
import tf_keras as keras

from vigil.models import losses
from vigil.models.config import ModelConfig
from vigil.models.networks import build_dae
from vigil.models.vae import trim_weights


def corrupt(x: tf.Tensor, noise_std: float, mask_prob: float) -> tf.Tensor:
    """x plus gaussian noise, with a random share of entries set to zero."""
    noisy = x + noise_std * tf.random.normal(tf.shape(x), dtype=x.dtype)
    if mask_prob > 0:
        keep = tf.cast(tf.random.uniform(tf.shape(x)) >= mask_prob, x.dtype)
        noisy = noisy * keep
    return noisy


class DAE(keras.Model):
    """Deterministic autoencoder trained to undo ``corrupt``; scored by mean squared error."""

    def __init__(self, config: ModelConfig, **kwargs):
        super().__init__(**kwargs)
        self.config = config
        self.net = build_dae(config)
        self.trim_active = tf.Variable(0.0, trainable=False, dtype=tf.float32, name="trim_active")
        self.loss_tracker = keras.metrics.Mean(name="loss")

    @property
    def metrics(self):
        """The loss, averaged per epoch."""
        return [self.loss_tracker]

    def call(self, x, training=False):
        """The reconstruction of a batch."""
        return self.net(x, training=training)

    def _per_record(self, clean, inputs, training: bool):
        recon = losses.flatten(self.net(inputs, training=training))
        return tf.reduce_mean(tf.square(losses.flatten(clean) - recon), axis=-1)

    def train_step(self, data):
        """One gradient step on the squared error between x and the reconstruction of a corrupted x (noise
        and masking), the highest-loss records trimmed once trimming is on."""
        x = data[0] if isinstance(data, tuple) else data
        noisy = corrupt(tf.cast(x, tf.float32), self.config.dae_noise_std, self.config.dae_mask_prob)
        with tf.GradientTape() as tape:
            per_record = self._per_record(x, noisy, training=True)
            used = per_record
            if self.config.trim_fraction > 0:
                used = per_record * trim_weights(per_record, self.config.trim_fraction * self.trim_active)
            loss = tf.nn.compute_average_loss(used)
        self.optimizer.minimize(loss, self.trainable_variables, tape=tape)
        self.loss_tracker.update_state(per_record)
        return {"loss": self.loss_tracker.result()}

    def test_step(self, data):
        """The reconstruction error of uncorrupted validation records."""
        x = data[0] if isinstance(data, tuple) else data
        self.loss_tracker.update_state(self._per_record(x, x, training=False))
        return {"loss": self.loss_tracker.result()}


class TrimAfter(keras.callbacks.Callback):
    """Switch trimming on once ``epochs`` epochs have passed (the model must learn first)."""

    def __init__(self, epochs: int):
        super().__init__()
        self.epochs = epochs

    def on_epoch_begin(self, epoch, logs=None):
        """Trim from epoch ``epochs`` on."""
        self.model.trim_active.assign(1.0 if epoch >= self.epochs else 0.0)
