"""Conformal p-values and thresholds keep their false-positive promise."""
from __future__ import annotations

import math

import numpy as np

from models.calibration import (Calibration, conformal_pvalues, conformal_threshold,
                                smooth_surprise)
from schemas.tables import SCORE_NAMES


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


def test_calibration_round_trips_through_json():
    rng = np.random.default_rng(4)
    scores = {n: rng.normal(size=200) for n in SCORE_NAMES}
    cal = Calibration.fit(scores, scores, (0.01,))
    back = Calibration.from_dict(cal.to_dict())
    np.testing.assert_allclose(back.anomaly_score(scores), cal.anomaly_score(scores))


def test_max_model_rule_lets_either_model_decide():
    from models.calibration import Calibration
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
