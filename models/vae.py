"""The variational autoencoder, trained with a custom ``train_step`` on the (beta-)ELBO.

    loss(x) = -( E_q[log p(x|z)] - beta_t * KL(q(z|x) || N(0, I)) )

with one reparameterised sample per step, beta_t warming up linearly over the first
epochs, and the per-record loss averaged over the *global* batch so that gradients summed
across replicas are right.  Scoring lives in ``vigil.models.scoring``.
"""
from __future__ import annotations

import tensorflow as tf
import tf_keras as keras

from vigil.models import losses
from vigil.models.config import ModelConfig
from vigil.models.networks import build_decoder, build_encoder


def trim_weights(per_record_loss: tf.Tensor, trim_fraction: float) -> tf.Tensor:
    """0 for the highest-loss ``trim_fraction`` of a batch, 1 elsewhere.

    Training data is rarely clean; rows the model cannot explain late in training are
    more likely contamination than signal, so they stop pulling on the weights.
    """
    n = tf.shape(per_record_loss)[0]
    keep = tf.maximum(1, tf.cast(tf.math.floor(tf.cast(n, tf.float32) * (1 - trim_fraction)), tf.int32))
    cutoff = tf.sort(per_record_loss)[keep - 1]
    return tf.stop_gradient(tf.cast(per_record_loss <= cutoff, tf.float32))


class VAE(keras.Model):
    """Gaussian-posterior VAE with a gaussian (learned variance) or bernoulli decoder."""

    def __init__(self, config: ModelConfig, **kwargs):
        super().__init__(**kwargs)
        self.config = config
        self.encoder = build_encoder(config)
        self.decoder = build_decoder(config)
        # Set by the KL warm-up callback; scoring and validation always use the full beta.
        self.kl_weight = tf.Variable(config.beta if config.kl_warmup_epochs == 0 else 0.0,
                                     trainable=False, dtype=tf.float32, name="kl_weight")
        self.trim_active = tf.Variable(0.0, trainable=False, dtype=tf.float32, name="trim_active")
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.recon_tracker = keras.metrics.Mean(name="recon_logprob")
        self.kl_tracker = keras.metrics.Mean(name="kl")

    @property
    def metrics(self):
        """Loss, reconstruction log-probability and KL, averaged per epoch."""
        return [self.loss_tracker, self.recon_tracker, self.kl_tracker]

    def call(self, x, training=False):
        """The encoder's (z_mean, z_log_var) of a batch."""
        return self.encoder(x, training=training)

    def _terms(self, x, training: bool):
        """Per-record (log p(x|z) for one sample z ~ q, KL)."""
        z_mean, z_log_var = self.encoder(x, training=training)
        z = z_mean + tf.exp(0.5 * z_log_var) * tf.random.normal(tf.shape(z_mean))
        x_flat = losses.flatten(x)
        ll = tf.reduce_sum(losses.recon_log_prob(
            x_flat, self.decoder(z, training=training), self.config.likelihood,
            self.config.min_scale), axis=-1)
        return ll, losses.kl_to_standard_normal(z_mean, z_log_var)

    def _update(self, loss, ll, kl):
        self.loss_tracker.update_state(loss)
        self.recon_tracker.update_state(ll)
        self.kl_tracker.update_state(kl)
        return {m.name: m.result() for m in self.metrics}

    def train_step(self, data):
        """One gradient step on -ELBO = -(log p(x|z) - beta KL(q(z|x) || p(z))), one z per record, the
        highest-loss records trimmed once warm-up is over."""
        x = data[0] if isinstance(data, tuple) else data
        with tf.GradientTape() as tape:
            ll, kl = self._terms(x, training=True)
            per_record = -(ll - self.kl_weight * kl)
            if self.config.trim_fraction > 0:
                per_record_used = per_record * trim_weights(
                    per_record, self.config.trim_fraction * self.trim_active)
            else:
                per_record_used = per_record
            loss = tf.nn.compute_average_loss(per_record_used)
        # minimize() goes through compute_gradients, which scales the loss under mixed precision.
        self.optimizer.minimize(loss, self.trainable_variables, tape=tape)
        return self._update(per_record, ll, kl)

    def test_step(self, data):
        """-ELBO at the full beta on validation records, nothing trimmed."""
        x = data[0] if isinstance(data, tuple) else data
        ll, kl = self._terms(x, training=False)
        return self._update(-(ll - self.config.beta * kl), ll, kl)


class KLWarmup(keras.callbacks.Callback):
    """beta_t = beta * min(1, (epoch + 1) / warmup_epochs); trimming starts after warm-up."""

    def on_epoch_begin(self, epoch, logs=None):
        """Set this epoch's KL weight, and switch trimming on once it is full."""
        cfg = self.model.config
        done = 1.0 if cfg.kl_warmup_epochs == 0 else min(1.0, (epoch + 1) / cfg.kl_warmup_epochs)
        self.model.kl_weight.assign(cfg.beta * done)
        self.model.trim_active.assign(1.0 if done >= 1.0 else 0.0)
