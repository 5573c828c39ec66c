"""Conformal calibration: p-values, thresholds and the combined anomaly score.

Two disjoint held-out splits of *normal* training data are used:

* split A holds each score's calibration values.  A record's conformal p-value for a
  score is ``p = (1 + #{calibration values at least as extreme}) / (n + 1)``, and the
  threshold at a target false-positive rate ``alpha`` flags exactly the records with
  ``p <= alpha``.  Under exchangeability the false-positive rate is then at most alpha.
* split B calibrates the *combined* statistic itself.  ``anomaly_score`` pools each
  score's smoothed surprise ``-log p~`` (p~ interpolates the empirical tail of split A
  and extends it exponentially past its largest value, so that extreme records stay
  ranked instead of tying at p = 1/(n+1)).  Its own conformal p-value and threshold come
  from split B, so ``is_anomaly`` keeps its false-positive guarantee without assuming the
  scores are independent, whatever the pooling rule.  Split A's rows join split B's with
  their leave-one-out ``anomaly_score`` (each row's surprise against the other rows of A:
  what it would score had it not calibrated the scores, the jackknife).  Twice the
  values narrow the threshold's spread by about sqrt(2) (``make bench-calibration``),
  for a guarantee that holds up to the one row each jackknife value leaves out (1/n in
  each p~):

  - ``mean``: the mean of the four surprises.  The VAE's three scores are three views of
    one density model, so this leans on the VAE; on tables its likelihood is the sharper
    signal (docs/design.md).
  - ``max_model``: the larger of the VAE's mean surprise and the DAE's surprise, so
    whichever model is surprised decides.
  - ``dae``: the DAE's surprise alone.  On images the DAE's error is the sharper signal,
    which ``mean`` gives a quarter of the weight; once the DAE is judged by its smoothed
    error, any weight on the VAE lowers mean AUROC on both image protocols
    (docs/design.md).

The statistics pooled are the four scores, except that a model configured with
``dae_error_sigma`` (images) has the DAE judged by ``dae_smooth_error`` instead of its
plain mean squared error (``vigil.models.scoring``); the ``dae_recon_error`` column and its
p-value stay the plain error.

With ``adjust_complexity`` (images), each score is first replaced by its residual from a
straight-line fit on the input's compressed size over split A (``vigil.models.complexity``):
the p-values then ask "is this score unusual for a normal image this complex?".  The
calibration then also records the PNG encoder's sizes for fixed probe images, so that a
machine whose encoder sizes images differently can be refused (``encoder_mismatch``).

All arrays here are oriented so that larger means more anomalous; ``SCORE_ORIENTATION``
turns the VAE's "higher = more normal" scores around.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from vigil.models.complexity import INPUT_BITS, encoder_mismatch, encoder_probe
from vigil.models.config import DAE_SMOOTH_ERROR
from vigil.schemas.tables import SCORE_NAMES, SCORE_ORIENTATION


def conformal_pvalues(calibration: np.ndarray, values: np.ndarray) -> np.ndarray:
    """(1 + #{c >= v}) / (n + 1) for each value v (larger = more anomalous)."""
    cal = np.sort(np.asarray(calibration, dtype=np.float64))
    n = len(cal)
    at_least = n - np.searchsorted(cal, np.asarray(values, dtype=np.float64), side="left")
    return (1.0 + at_least) / (n + 1.0)


def conformal_threshold(calibration: np.ndarray, alpha: float) -> float:
    """The value t with ``v > t  <=>  p(v) <= alpha``; +inf when alpha is out of reach.

    With n calibration values, flagging needs (1 + #{c >= v}) <= alpha (n + 1), i.e. v
    above the (m+1)-th largest value where m = floor(alpha (n+1)) - 1.  When m < 0 (fewer
    than 1/alpha - 1 values) no record can be flagged at that rate.
    """
    cal = np.sort(np.asarray(calibration, dtype=np.float64))
    m = math.floor(alpha * (len(cal) + 1) + 1e-9) - 1
    if m < 0 or len(cal) == 0:
        return math.inf
    return float(cal[len(cal) - 1 - m])


def smooth_surprise(calibration: np.ndarray, values: np.ndarray) -> np.ndarray:
    """-log p~(v): a continuous, monotone version of the conformal p-value."""
    cal = np.sort(np.asarray(calibration, dtype=np.float64))
    n = len(cal)
    values = np.asarray(values, dtype=np.float64)
    survival = (n - np.arange(n) + 1.0) / (n + 1.0)     # p at each calibration value
    p = np.interp(values, cal, survival, left=1.0)
    k = max(5, n // 20)
    top = cal[-k:]
    scale = float(np.mean(top - cal[-k - 1])) if n > k else float(np.std(cal))
    if not np.isfinite(scale) or scale <= 0:
        scale = max(float(np.std(cal)), 1e-12)
    beyond = values > cal[-1]
    p[beyond] = survival[-1] * np.exp(-(values[beyond] - cal[-1]) / scale)
    # A value far past the tail (or +inf) must stay finite and still rank last.
    return np.nan_to_num(-np.log(np.maximum(p, 1e-300)), nan=np.inf, posinf=690.0)


def loo_surprise(calibration: np.ndarray) -> np.ndarray:
    """``smooth_surprise`` of each calibration value against the other n - 1, in input order.

    Closed form of ``smooth_surprise(np.delete(cal, i), cal[i])``: without itself, a
    value lies between its sorted neighbours, whose survivals are (n - r + 1)/n and
    (n - r)/n; a tied value takes the survival of the last of its ties, as ``np.interp``
    gives a record that ties them; only a lone largest value reaches the exponential tail.
    """
    values = np.asarray(calibration, dtype=np.float64)
    n = len(values)
    order = np.argsort(values, kind="stable")
    cal = values[order]
    p = np.ones(n)
    r = np.arange(1, n - 1)
    lo, hi = cal[r - 1], cal[r + 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(hi > lo, (cal[r] - lo) / (hi - lo), 0.0)
    p[r] = ((n - r + 1) - np.clip(np.nan_to_num(frac), 0.0, 1.0)) / n
    surprise = -np.log(p)
    if n > 1:
        surprise[-1] = smooth_surprise(cal[:-1], cal[-1:])[0]
    right = np.searchsorted(cal, cal, side="right")
    tied = right - np.searchsorted(cal, cal, side="left") > 1
    surprise[tied] = -np.log((n - right[tied] + 2) / n)
    out = np.empty(n)
    out[order] = surprise
    return out


ORIENTATION = {**SCORE_ORIENTATION, DAE_SMOOTH_ERROR: +1}


def oriented(name: str, values: np.ndarray) -> np.ndarray:
    """A score turned so that larger = more anomalous."""
    return ORIENTATION[name] * np.asarray(values, dtype=np.float64)


def complexity_slope(values: np.ndarray, bits: np.ndarray) -> float:
    """Least-squares slope of a score on the input's compressed size (0 if undefined)."""
    bits = np.asarray(bits, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(values) & np.isfinite(bits)
    spread = np.var(bits[ok]) if ok.sum() > 2 else 0.0
    if spread <= 0:
        return 0.0
    return float(np.mean((bits[ok] - bits[ok].mean()) * (values[ok] - values[ok].mean())) / spread)


@dataclass
class Calibration:
    """Calibration values of each score (split A) and of the combined statistic (split B,
    and with ``pooled_a`` split A's leave-one-out values)."""
    scores: dict[str, np.ndarray]        # oriented (and complexity-adjusted), split A
    combined: np.ndarray                 # anomaly_score on split B (+ split A, jackknifed)
    target_fprs: tuple[float, ...] = (0.01,)
    combine: tuple[str, ...] = SCORE_NAMES
    rule: str = "mean"
    slopes: dict[str, float] = field(default_factory=dict)   # per score, per input bit
    pooled_a: bool = False               # bundles written before the jackknife: B only
    encoder: dict = field(default_factory=dict)   # PNG sizes of probe images (complexity)

    @classmethod
    def fit(cls, scores_a: dict[str, np.ndarray], scores_b: dict[str, np.ndarray],
            target_fprs=(0.01,), combine=SCORE_NAMES, rule: str = "mean",
            adjust_complexity: bool = False,
            image_shape: tuple[int, int, int] | None = None) -> "Calibration":
        """From raw scores of two disjoint held-out normal splits.

        With ``adjust_complexity`` both dicts must also hold ``input_bits``, and with an
        ``image_shape`` the calibration records this machine's PNG encoder at that shape.  The jackknife
        keeps split A's complexity slopes: refitting them without one row moves them by
        that row's leverage, about 1/n unless its complexity is extreme
        (``make bench-calibration`` has an images setting with skewed complexities).
        """
        names = tuple(dict.fromkeys((*SCORE_NAMES, *combine)))
        slopes = {n: complexity_slope(oriented(n, scores_a[n]), scores_a[INPUT_BITS])
                  for n in names} if adjust_complexity else {}
        cal = cls({}, np.array([]), tuple(target_fprs), tuple(combine), rule, slopes, pooled_a=True,
                  encoder=encoder_probe(image_shape) if adjust_complexity and image_shape else {})
        split_a = {n: cal.adjusted(n, scores_a) for n in names}
        cal.scores = {n: np.sort(v) for n, v in split_a.items()}
        jackknife = cal._pool({n: loo_surprise(split_a[n]) for n in cal.combine})
        cal.combined = np.sort(np.r_[cal.anomaly_score(scores_b), jackknife])
        return cal

    @property
    def needs_input_bits(self) -> bool:
        """Whether scoring must measure each image's compressed size (complexity adjustment)."""
        return bool(self.slopes)

    @property
    def statistics(self) -> tuple[str, ...]:
        """The keys of a scores dict this calibration reads."""
        return (*self.scores, *((INPUT_BITS,) if self.slopes else ()))

    def encoder_mismatch(self) -> str | None:
        """Why this machine's PNG sizes differ from those calibrated on (None if they agree,
        or if the calibration does not use them)."""
        return encoder_mismatch(self.encoder) if self.slopes and self.encoder else None

    def adjusted(self, name: str, scores: dict[str, np.ndarray]) -> np.ndarray:
        """A score oriented (larger = more anomalous), minus what its complexity explains."""
        if name not in scores:
            raise ValueError(f"this calibration reads '{name}'; score with the Scorer of the "
                             "model it was fitted for")
        values = oriented(name, scores[name])
        if not self.slopes:
            return values
        if INPUT_BITS not in scores:
            raise ValueError(f"this calibration adjusts for input complexity; pass "
                             f"'{INPUT_BITS}' (vigil.models.complexity.input_bits) with the scores")
        return values - self.slopes[name] * np.asarray(scores[INPUT_BITS], dtype=np.float64)

    def pvalues(self, scores: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Conformal p-value of each score, keyed ``<score>_pvalue``."""
        return {f"{n}_pvalue": conformal_pvalues(self.scores[n], self.adjusted(n, scores))
                for n in SCORE_NAMES}

    def anomaly_score(self, scores: dict[str, np.ndarray]) -> np.ndarray:
        """Pooled smoothed surprise of the combined scores (larger = more anomalous)."""
        return self._pool({n: smooth_surprise(self.scores[n], self.adjusted(n, scores))
                           for n in self.combine})

    def _pool(self, surprise: dict[str, np.ndarray]) -> np.ndarray:
        """The rule's pooling of per-statistic surprises into ``anomaly_score``."""
        if self.rule == "dae":
            return np.mean([v for n, v in surprise.items() if n.startswith("dae_")], axis=0)
        if self.rule == "max_model":
            by_model = [np.mean([v for n, v in surprise.items() if n.startswith(m)], axis=0)
                        for m in ("vae_", "dae_") if any(n.startswith(m) for n in surprise)]
            return np.max(by_model, axis=0)
        return np.mean(list(surprise.values()), axis=0)

    def anomaly_pvalue(self, anomaly_score: np.ndarray) -> np.ndarray:
        """Conformal p-value of each ``anomaly_score`` against the held-out normals'."""
        return conformal_pvalues(self.combined, anomaly_score)

    def threshold(self, alpha: float) -> float:
        """Threshold on ``anomaly_score`` at false-positive rate alpha."""
        return conformal_threshold(self.combined, alpha)

    def flag_limit(self, alpha: float) -> dict:
        """Whether ``anomaly_score`` can flag anything at rate ``alpha``, and what it takes.

        With n values setting the threshold, the smallest reachable rate is 1/(n + 1); a
        rate below it has no threshold, and nothing would ever be flagged.
        """
        n = int(len(self.combined))
        return {"target_fpr": alpha, "can_flag": math.isfinite(self.threshold(alpha)),
                "values": n, "values_needed": max(math.ceil(1 / alpha - 1 - 1e-9), 0),
                "smallest_fpr": 1.0 / (n + 1)}

    def cannot_flag(self, alpha: float) -> str | None:
        """Why nothing can be flagged at rate ``alpha``; None when something can."""
        limit = self.flag_limit(alpha)
        if limit["can_flag"]:
            return None
        return (f"at target FPR {alpha:g} the threshold needs {limit['values_needed']} normal "
                f"calibration values and has {limit['values']}, so nothing can be flagged; "
                f"the smallest rate it can flag at is {limit['smallest_fpr']:.3g}")

    def score_thresholds(self, alpha: float) -> dict[str, float]:
        """Per-score thresholds at alpha, in each score's own units and orientation.

        With a complexity adjustment they apply to ``score - slope * input_bits`` (VAE
        scores: ``score + slope * input_bits``, the orientation turned back).
        """
        out = {}
        for n in SCORE_NAMES:
            t = conformal_threshold(self.scores[n], alpha)
            out[n] = SCORE_ORIENTATION[n] * t
        return out

    def describe(self) -> dict:
        """What every threshold means, for the manifest."""
        n_a = int(len(next(iter(self.scores.values()))))
        return {
            "rule": "is_anomaly = anomaly_score > threshold, equivalently anomaly_pvalue <= target_fpr",
            "anomaly_score": {"mean": "mean of -log p~ over {}",
                              "max_model": "max of the VAE's mean and the DAE's -log p~, over {}",
                              "dae": "-log p~ of {} (the DAE alone)"}[self.rule]
                             .format(", ".join(self.combine)) + "; p~ is the tail-smoothed "
                             "conformal p-value from calibration split A" + (
                                 f" ({DAE_SMOOTH_ERROR}: the DAE's squared error after "
                                 "Gaussian smoothing of the residual; not a column)"
                                 if DAE_SMOOTH_ERROR in self.combine else ""),
            "threshold": "conformal threshold of anomaly_score on calibration split B" + (
                " and split A's leave-one-out anomaly_score (each row against the other rows "
                "of A)" if self.pooled_a else "") + " (FPR <= target on exchangeable normal "
                "data; inf if they hold fewer than 1/target - 1 values)",
            "score_thresholds": "per-score conformal thresholds from split A, in the score's own "
                                "units: anomalous below for VAE log-probabilities, above for "
                                "dae_recon_error" + (
                                    "; each applies to the complexity-adjusted score: "
                                    "dae_recon_error - slope * input_bits, VAE scores + "
                                    "slope * input_bits (input_bits: the image's PNG size; "
                                    "slopes in 'complexity_slopes')" if self.slopes else ""),
            "complexity_slopes": dict(self.slopes),
            **({"png_encoder": f"{self.encoder['encoder']}; scoring refuses an encoder that "
                               "sizes the probe images differently"} if self.encoder else {}),
            "n_split_a": n_a,
            "n_split_b": int(len(self.combined)) - (n_a if self.pooled_a else 0),
            "thresholds": {str(a): {k: (v if math.isfinite(v) else None) for k, v in
                                    {"anomaly_score": self.threshold(a),
                                     **self.score_thresholds(a)}.items()}
                           for a in self.target_fprs},
            "smallest_fpr": 1.0 / (len(self.combined) + 1),
            "can_flag": {str(a): self.flag_limit(a)["can_flag"] for a in self.target_fprs},
        }

    def to_dict(self) -> dict:
        """The manifest's ``calibration`` entry."""
        return {
            "scores": {n: v.tolist() for n, v in self.scores.items()},
            "combined": self.combined.tolist(),
            "target_fprs": list(self.target_fprs),
            "combine": list(self.combine),
            "rule": self.rule,
            "slopes": dict(self.slopes),
            "pooled_a": self.pooled_a,
            "encoder": dict(self.encoder),
            "description": self.describe(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Calibration":
        """Read back a manifest's ``calibration`` entry."""
        return cls({n: np.asarray(v, dtype=np.float64) for n, v in d["scores"].items()},
                   np.asarray(d["combined"], dtype=np.float64),
                   tuple(d["target_fprs"]), tuple(d["combine"]), d.get("rule", "mean"),
                   {n: float(v) for n, v in d.get("slopes", {}).items()},
                   bool(d.get("pooled_a", False)), dict(d.get("encoder") or {}))


def default_target_fpr(calibration: Calibration) -> float:
    """The rate to flag at when none is asked for: the smallest calibrated one that can
    flag at all, else the smallest (a model calibrated for several rates)."""
    trained = sorted(calibration.target_fprs)
    return next((a for a in trained if calibration.cannot_flag(a) is None), trained[0])
