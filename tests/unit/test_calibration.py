"""Conformal p-values and thresholds keep their false-positive promise."""
from __future__ import annotations

import math

import numpy as np
import pytest

from vigil.models.calibration import (
    Calibration,
    conformal_pvalues,
    conformal_threshold,
    loo_surprise,
    smooth_surprise,
)
from vigil.schemas.tables import SCORE_NAMES


def test_pvalue_formula():
    cal = np.array([1.0, 2.0, 3.0, 4.0])
    np.testing.assert_allclose(conformal_pvalues(cal, [0.0, 2.0, 2.5, 5.0]),
                               [5 / 5, 4 / 5, 3 / 5, 1 / 5])


def test_threshold_matches_pvalue_rule():
    rng = np.random.default_rng(0)
    cal = rng.normal(size=999)
    t = conformal_threshold(cal, 0.01)
    v = rng.normal(size=10_000) * 3
    np.testing.assert_array_equal(v > t, conformal_pvalues(cal, v) <= 0.01)


def test_threshold_is_infinite_when_alpha_out_of_reach():
    assert conformal_threshold(np.arange(50.0), 0.01) == math.inf
    assert math.isfinite(conformal_threshold(np.arange(99.0), 0.01))


def test_conformal_fpr_at_most_target_on_held_out_normals():
    rng = np.random.default_rng(1)
    fprs = []
    for _ in range(200):
        cal = rng.gamma(2.0, size=499)
        test = rng.gamma(2.0, size=2000)
        fprs.append(np.mean(test > conformal_threshold(cal, 0.01)))
    assert np.mean(fprs) <= 0.01 + 0.001


def test_combined_score_fpr_on_held_out_normals():
    rng = np.random.default_rng(2)

    def draw(n):  # four correlated scores, VAE ones oriented "higher = normal"
        base = rng.normal(size=n)
        return {"vae_recon_logprob": -base - 0.3 * rng.normal(size=n),
                "vae_elbo": -base - 0.3 * rng.normal(size=n),
                "vae_log_px": -base - 0.3 * rng.normal(size=n),
                "dae_recon_error": np.exp(base + 0.5 * rng.normal(size=n))}
    cal = Calibration.fit(draw(2000), draw(2000), (0.01, 0.05))
    normals = draw(100_000)
    score = cal.anomaly_score(normals)
    for alpha in (0.01, 0.05):
        fpr = np.mean(score > cal.threshold(alpha))
        assert 0.5 * alpha <= fpr <= alpha * 1.15, (alpha, fpr)
    # Extreme records stay ranked, not tied at the smallest p-value.
    far = {n: v[:3] * 0 + (np.array([-20.0, -40.0, -80.0]) if n != "dae_recon_error"
                           else np.array([1e3, 1e4, 1e5])) for n, v in normals.items()}
    s = cal.anomaly_score(far)
    assert s[0] < s[1] < s[2]


def test_smooth_surprise_is_monotone_and_finite():
    cal = np.sort(np.random.default_rng(3).normal(size=300))
    v = np.linspace(-5, 50, 1000)
    s = smooth_surprise(cal, v)
    assert np.all(np.diff(s) >= 0) and np.all(np.isfinite(s))
    assert np.isfinite(smooth_surprise(cal, np.array([np.inf]))).all()


@pytest.mark.parametrize("decimals", [None, 1, 0])
def test_leave_one_out_surprise_is_each_value_scored_without_itself(decimals):
    values = np.random.default_rng(5).normal(size=300)
    if decimals is not None:        # ties, down to a handful of distinct values
        values = np.round(values, decimals)
    by_hand = [smooth_surprise(np.delete(values, i), values[i:i + 1])[0] for i in range(len(values))]
    np.testing.assert_allclose(loo_surprise(values), by_hand, rtol=1e-12, atol=1e-12)
    assert loo_surprise(np.array([2.0])).tolist() == [0.0]


def test_split_a_joins_split_b_in_the_combined_threshold():
    """Split A's rows, each scored against the others, double the combined threshold's values."""
    rng = np.random.default_rng(6)
    normal = lambda n: {k: rng.normal(size=n) for k in SCORE_NAMES}  # noqa: E731
    a, b = normal(300), normal(200)
    cal = Calibration.fit(a, b, (0.01,))
    jackknife = np.mean([loo_surprise(cal.adjusted(k, a)) for k in SCORE_NAMES], axis=0)
    np.testing.assert_allclose(cal.combined, np.sort(np.r_[cal.anomaly_score(b), jackknife]))
    assert (cal.describe()["n_split_a"], cal.describe()["n_split_b"]) == (300, 200)
    assert Calibration.from_dict(cal.to_dict()).describe()["n_split_b"] == 200
    # A bundle calibrated before the jackknife holds split B alone and still reads so.
    old = {k: v for k, v in cal.to_dict().items() if k != "pooled_a"}
    old["combined"] = cal.anomaly_score(b).tolist()
    assert Calibration.from_dict(old).describe()["n_split_b"] == 200


def test_calibration_round_trips_through_json():
    rng = np.random.default_rng(4)
    scores = {n: rng.normal(size=200) for n in SCORE_NAMES}
    cal = Calibration.fit(scores, scores, (0.01,))
    back = Calibration.from_dict(cal.to_dict())
    np.testing.assert_allclose(back.anomaly_score(scores), cal.anomaly_score(scores))


def test_max_model_rule_lets_either_model_decide():
    from vigil.models.calibration import Calibration
    rng = np.random.default_rng(0)
    names = ("vae_recon_logprob", "vae_elbo", "vae_log_px", "dae_recon_error")
    normal = lambda n: {k: rng.normal(size=n) for k in names}  # noqa: E731
    cal = Calibration.fit(normal(2000), normal(2000), rule="max_model")
    odd_dae = {k: np.zeros(1) for k in names}
    odd_dae["dae_recon_error"] = np.array([6.0])          # only the DAE is surprised
    mean_cal = Calibration(cal.scores, cal.combined, rule="mean")
    assert cal.anomaly_score(odd_dae)[0] > 3 * mean_cal.anomaly_score(odd_dae)[0]
    assert Calibration.from_dict(cal.to_dict()).rule == "max_model"
    held_out = normal(20000)
    fpr = np.mean(cal.anomaly_score(held_out) > cal.threshold(0.01))
    assert fpr <= 0.013


def test_complexity_adjustment_judges_scores_against_equally_complex_normals():
    """A simple image that scores like an average normal one is still caught.

    Normal records' scores grow with their complexity (as likelihoods do with ink); the
    planted anomalies have low complexity and mid-range scores: unremarkable overall, far
    off for images that simple.
    """
    from vigil.models.complexity import INPUT_BITS
    rng = np.random.default_rng(5)

    def normals(n):
        bits = rng.uniform(1000, 3000, size=n)
        base = bits / 100 + rng.normal(size=n)
        return {"vae_recon_logprob": -base, "vae_elbo": -base - 1, "vae_log_px": -base + 1,
                "dae_recon_error": base / 10, INPUT_BITS: bits}
    odd = {"vae_recon_logprob": np.full(50, -20.0), "vae_elbo": np.full(50, -21.0),
           "vae_log_px": np.full(50, -19.0), "dae_recon_error": np.full(50, 2.0),
           INPUT_BITS: np.full(50, 1000.0)}
    plain = Calibration.fit(normals(2000), normals(2000), rule="max_model")
    adjusted = Calibration.fit(normals(2000), normals(2000), rule="max_model",
                               adjust_complexity=True)
    assert np.mean(plain.anomaly_score(odd) > plain.threshold(0.01)) == 0
    assert np.mean(adjusted.anomaly_score(odd) > adjusted.threshold(0.01)) == 1
    held_out = normals(20000)
    assert np.mean(adjusted.anomaly_score(held_out) > adjusted.threshold(0.01)) <= 0.013
    assert adjusted.slopes["dae_recon_error"] > 0 and adjusted.slopes["vae_log_px"] > 0
    back = Calibration.from_dict(adjusted.to_dict())
    np.testing.assert_allclose(back.anomaly_score(odd), adjusted.anomaly_score(odd))
    missing = {k: v for k, v in odd.items() if k != INPUT_BITS}
    with pytest.raises(ValueError, match="input_bits"):
        adjusted.anomaly_score(missing)


def test_input_bits_measure_what_a_compressor_needs():
    from vigil.models.complexity import input_bits
    flat = np.zeros((1, 28, 28, 1), np.uint8)
    noise = np.random.default_rng(6).integers(0, 256, size=(1, 28, 28, 1)).astype(np.uint8)
    bits = input_bits(np.concatenate([flat, noise]))
    assert bits[0] < bits[1] / 5
    # The same picture, however it arrived (float pixel values, or RGB of the gray).
    np.testing.assert_array_equal(input_bits(noise.astype(np.float32)), bits[1:])
    assert input_bits(np.repeat(noise, 3, axis=-1))[0] > 0
    with pytest.raises(ValueError, match="shape"):
        input_bits(np.zeros((2, 28, 28)))


def test_calibration_records_the_png_encoder_and_refuses_another():
    from vigil.models.complexity import INPUT_BITS, encoder_probe, probe_images
    probes = probe_images((28, 28, 1))
    assert probes.shape == (4, 28, 28, 1) and probes.dtype == np.uint8
    np.testing.assert_array_equal(probes, probe_images((28, 28, 1)))      # fixed pixels
    bits = encoder_probe((28, 28, 1))["bits"]
    assert bits == sorted(bits) and len(set(bits)) == 4                  # blank to busy
    rng = np.random.default_rng(7)

    def normals(n):
        b = rng.uniform(1000, 3000, size=n)
        return {**{name: rng.normal(size=n) + b / 1000 for name in SCORE_NAMES}, INPUT_BITS: b}
    cal = Calibration.fit(normals(300), normals(300), adjust_complexity=True,
                          image_shape=(28, 28, 1))
    assert cal.encoder["bits"] == bits and "Pillow" in cal.encoder["encoder"]
    assert cal.encoder_mismatch() is None                                 # the same machine
    back = Calibration.from_dict(cal.to_dict())
    assert back.encoder == cal.encoder and back.encoder_mismatch() is None
    assert "Pillow" in cal.describe()["png_encoder"]
    back.encoder["bits"] = [b + 8 * 4 for b in bits]                      # four bytes off
    message = back.encoder_mismatch()
    assert "PNG-compressed size" in message and "retrain" in message and "\n" not in message
    # Scores not adjusted for complexity do not depend on the encoder.
    plain = Calibration.fit(normals(300), normals(300), image_shape=(28, 28, 1))
    assert plain.encoder == {} and plain.encoder_mismatch() is None


def test_the_dae_can_be_judged_by_its_smoothed_error():
    """With dae_smooth_error pooled, the DAE's surprise comes from it, not the plain MSE
    (whose column and p-value stay as they are)."""
    from vigil.models.config import DAE_SMOOTH_ERROR
    rng = np.random.default_rng(8)

    def normals(n):
        base = rng.normal(size=n)
        return {"vae_recon_logprob": -base, "vae_elbo": -base - 1, "vae_log_px": -base + 1,
                "dae_recon_error": np.exp(base), DAE_SMOOTH_ERROR: rng.gamma(2.0, 0.5, size=n)}
    combine = ("vae_recon_logprob", "vae_elbo", "vae_log_px", DAE_SMOOTH_ERROR)
    cal = Calibration.fit(normals(2000), normals(2000), combine=combine, rule="max_model")
    assert cal.statistics == (*SCORE_NAMES, DAE_SMOOTH_ERROR)
    odd = normals(5)
    odd.update({n: np.zeros(5) for n in SCORE_NAMES})   # typical on every column ...
    odd[DAE_SMOOTH_ERROR][:] = 50.0                     # ... but the smoothed error
    odd["dae_recon_error"][:] = 1.0
    assert np.all(cal.anomaly_score(odd) > cal.threshold(0.01))
    assert np.all(cal.pvalues(odd)["dae_recon_error_pvalue"] > 0.01)
    held_out = normals(20000)
    assert np.mean(cal.anomaly_score(held_out) > cal.threshold(0.01)) <= 0.013
    back = Calibration.from_dict(cal.to_dict())
    np.testing.assert_allclose(back.anomaly_score(odd), cal.anomaly_score(odd))
    assert DAE_SMOOTH_ERROR in cal.describe()["anomaly_score"]
    with pytest.raises(ValueError, match=DAE_SMOOTH_ERROR):
        cal.anomaly_score({k: v for k, v in odd.items() if k != DAE_SMOOTH_ERROR})
