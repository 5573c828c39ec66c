"""The score definitions checked against closed forms and known densities."""
from __future__ import annotations

import math

import numpy as np
import tensorflow as tf
import tf_keras as keras

from vigil.models import losses
from vigil.models.config import ModelConfig
from vigil.models.scoring import Member, Scorer


def test_kl_closed_form_matches_monte_carlo():
    rng = np.random.default_rng(0)
    mean = rng.normal(size=(3, 4)).astype(np.float32)
    log_var = rng.normal(scale=0.5, size=(3, 4)).astype(np.float32)
    closed = losses.kl_to_standard_normal(mean, log_var).numpy()
    z = mean + np.exp(0.5 * log_var) * rng.normal(size=(200_000, 3, 4)).astype(np.float32)
    log_q = losses.log_normal(z, mean, log_var).numpy()
    log_p = losses.log_normal(z, np.zeros_like(mean), np.zeros_like(log_var)).numpy()
    mc = (log_q - log_p).mean(axis=0)
    np.testing.assert_allclose(closed, mc, rtol=0.02, atol=0.01)


def test_log_mean_exp_is_stable():
    v = tf.constant([[1000.0, 1000.0], [-1000.0, -1000.0]])
    np.testing.assert_allclose(losses.log_mean_exp(v, axis=1).numpy(), [1000.0, -1000.0])


def _linear_gaussian(W: np.ndarray, b: np.ndarray, sigma: float, enc_shift: float = 0.0):
    """A VAE whose decoder is x = W z + b + N(0, sigma^2) and whose encoder is near-exact."""
    d, k = W.shape
    config = ModelConfig("features", (d,), latent_dim=k, hidden=(4,), min_scale=1e-3,
                         n_recon_samples=8, n_iwae_samples=8)
    post_cov = np.linalg.inv(np.eye(k) + W.T @ W / sigma ** 2)
    A = (post_cov @ W.T / sigma ** 2)          # posterior mean = A (x - b)
    x_in = keras.Input((d,))
    mean = keras.layers.Dense(k)(x_in)
    log_var = keras.layers.Dense(k)(x_in)
    encoder = keras.Model(x_in, [mean, log_var])
    encoder.layers[1].set_weights([A.T, (-A @ b + enc_shift).astype(np.float32)])
    encoder.layers[2].set_weights([np.zeros((d, k)), np.log(np.diag(post_cov))])
    z_in = keras.Input((k,))
    out_mean = keras.layers.Dense(d)(z_in)
    raw = keras.layers.Dense(d)(z_in)
    decoder = keras.Model(z_in, [out_mean, raw])
    decoder.layers[1].set_weights([W.T, b])
    # var = min_scale^2 + softplus(raw) = sigma^2
    raw_bias = math.log(math.expm1(sigma ** 2 - 1e-6))
    decoder.layers[2].set_weights([np.zeros((k, d)), np.full(d, raw_bias)])
    x_dae = keras.Input((d,))
    dae = keras.Model(x_dae, keras.layers.Dense(d)(x_dae))
    cov = W @ W.T + sigma ** 2 * np.eye(d)
    return config, encoder, decoder, dae, cov


def _true_log_px(x, b, cov):
    d = len(b)
    diff = x - b
    _, logdet = np.linalg.slogdet(cov)
    mahalanobis = np.einsum("ni,ij,nj->n", diff, np.linalg.inv(cov), diff)
    return -0.5 * (d * math.log(2 * math.pi) + logdet + mahalanobis)


def _scores(config, enc, dec, dae, x, K, L=8, seed=1):
    cfg = ModelConfig(**{**config.to_dict(), "n_iwae_samples": K, "n_recon_samples": L,
                         "input_shape": config.input_shape, "hidden": config.hidden})
    return Scorer([Member(enc, dec, dae)], cfg, seed=seed)(x)


def test_iwae_is_at_least_elbo_and_grows_with_k_towards_true_log_px():
    rng = np.random.default_rng(1)
    W = rng.normal(size=(6, 2)).astype(np.float32)
    b = rng.normal(size=6).astype(np.float32)
    # A deliberately shifted encoder: the ELBO has a gap that importance sampling closes.
    config, enc, dec, dae, cov = _linear_gaussian(W, b, 0.5, enc_shift=0.15)
    x = (rng.normal(size=(64, 2)) @ W.T + b + 0.5 * rng.normal(size=(64, 6))).astype(np.float32)
    truth = _true_log_px(x, b, cov)
    # Every record of one scorer shares its noise, so the expectations are taken over seeds.
    seeds = range(4)
    by_k = {K: [_scores(config, enc, dec, dae, x, K, seed=s) for s in seeds] for K in (1, 8, 256)}
    elbo = np.mean([out["vae_elbo"] for out in by_k[256]])
    assert np.mean([out["vae_log_px"] for out in by_k[8]]) >= elbo
    gaps = [np.mean([np.abs(out["vae_log_px"] - truth) for out in by_k[K]]) for K in (1, 8, 256)]
    assert gaps[0] > gaps[1] > gaps[2]
    assert gaps[2] < 0.05
    assert elbo < np.mean(truth)


def test_exact_posterior_gives_exact_log_px():
    rng = np.random.default_rng(2)
    W = (np.linalg.qr(rng.normal(size=(5, 5)))[0][:, :3] * [2.0, 1.0, 0.5]).astype(np.float32)
    b = np.zeros(5, np.float32)
    config, enc, dec, dae, cov = _linear_gaussian(W, b, 0.7)
    x = rng.normal(size=(16, 5)).astype(np.float32)
    out = _scores(config, enc, dec, dae, x, K=4)
    np.testing.assert_allclose(out["vae_log_px"], _true_log_px(x, b, cov), atol=2e-3)


def test_scores_do_not_depend_on_batch_or_order(features_registry):
    from vigil.models import registry
    bundle = registry.load(features_registry["registry"], "cardio")
    scorer = bundle.scorer()
    x = bundle.preprocessing.transform(features_registry["x"][:40])
    whole = scorer(x)
    order = np.random.default_rng(0).permutation(40)
    shuffled = scorer(x[order])
    single = scorer(x[7:8])
    for k in whole:
        np.testing.assert_array_equal(whole[k][order], shuffled[k])
        np.testing.assert_array_equal(whole[k][7], single[k][0])


def test_every_record_is_scored_with_the_models_own_noise(features_registry):
    """Common random numbers: the same record scores the same beside any other, and the
    noise comes from the model's seed, so another seed moves the VAE's scores, not the DAE's."""
    from vigil.models import registry
    bundle = registry.load(features_registry["registry"], "cardio")
    scorer = bundle.scorer()
    x = bundle.preprocessing.transform(features_registry["x"][:3])
    twice = scorer(np.concatenate([x, x]))
    for k, v in twice.items():
        np.testing.assert_array_equal(v[:3], v[3:])
    other = Scorer(bundle.members, bundle.config, seed=scorer.seed + 1)(x)
    assert not np.any(other["vae_elbo"] == twice["vae_elbo"][:3])
    np.testing.assert_array_equal(other["dae_recon_error"], twice["dae_recon_error"][:3])


def test_shared_noise_is_balanced_in_every_even_prefix():
    """The L samples of recon_logprob and the K of log_px each average to exactly zero."""
    from vigil.models.scoring import common_noise
    eps = common_noise(7, 64, 32).numpy()[0]
    for n in (2, 16, 64):
        np.testing.assert_allclose(eps[:n].sum(axis=0), 0.0, atol=1e-6)
    assert len(np.unique(eps[::2], axis=0)) == 32       # 32 distinct pairs, not one repeated
    np.testing.assert_array_equal(common_noise(7, 5, 3).numpy()[0], common_noise(7, 6, 3).numpy()[0, :5])


def test_many_scorers_in_one_process_raise_no_retracing_warning(features_registry):
    """Each Scorer traces once; TensorFlow's retracing alarm about that is dropped, others pass."""
    import logging

    from vigil.models import registry
    bundle = registry.load(features_registry["registry"], "cardio")
    x = bundle.preprocessing.transform(features_registry["x"][:4])
    seen = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logger = tf.get_logger()
    logger.addHandler(handler)
    try:
        for _ in range(7):
            bundle.scorer()(x)
        logger.warning("7 out of the last 7 calls to <function elsewhere> triggered tf.function "
                       "retracing.")
    finally:
        logger.removeHandler(handler)
    assert not any("Scorer._score_batch" in m for m in seen), seen
    assert any("<function elsewhere>" in m for m in seen)


def test_smoothed_error_forgives_a_shifted_edge_but_not_a_missing_stroke():
    """Same plain MSE; smoothing cancels a one-pixel misplacement's +/- pair only."""
    image = np.zeros((1, 16, 16, 1), np.float32)
    image[0, 4:12, 6] = 1.0                            # a vertical stroke, 1 pixel wide
    shifted = np.roll(image, 1, axis=2)                # the same stroke, one pixel right
    lost = np.zeros_like(image)                        # the stroke gone, and as much ink
    lost[0, 4:12, 12] = 1.0                            # added where there was none
    assert np.sum((image - lost) ** 2) == np.sum((image - shifted) ** 2)   # 16 either way
    shift_err = losses.smoothed_squared_error(image, shifted, 0.7).numpy()[0]
    lost_err = losses.smoothed_squared_error(image, lost, 0.7).numpy()[0]
    assert shift_err < lost_err / 2


def test_smoothed_error_is_a_gaussian_filter_of_the_residual():
    from scipy.ndimage import gaussian_filter
    rng = np.random.default_rng(1)
    x = rng.random((3, 12, 10, 2)).astype(np.float32)
    r = rng.random((3, 12, 10, 2)).astype(np.float32)
    # scipy's truncate is in sigmas: 3 sigmas rounded up, like losses.gaussian_kernel_1d.
    expected = (gaussian_filter(x - r, sigma=(0, 1.0, 1.0, 0), mode="constant",
                                truncate=3.0) ** 2).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(losses.smoothed_squared_error(x, r, 1.0).numpy(), expected,
                               rtol=1e-5)
