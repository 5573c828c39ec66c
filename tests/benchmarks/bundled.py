"""Held-out tables: data sets that ship with scikit-learn, under adbench-unsup's protocol.

No default of vigil's was chosen on them, so they check whether a change that helps the
shared protocols generalises or is fitted to them. Each set keeps one part of its classes
as normal and subsamples the rest to ``ANOMALY_SHARE`` of the normals (a fixed draw, as
ADBench builds its classical tables); then the shared protocol's stratified 70/30 split,
the train part contaminated, both standardised by the train part's mean and std.

- ``breast_cancer``: benign normal, malignant anomalous (as ODDS' WBC);
- ``wine``: cultivars 0 and 1 normal, cultivar 2 anomalous;
- ``digits_<d>``: the 8 x 8 digit d normal, the other digits anomalous (a one-class table);
- ``digits_not_<d>``: every digit but d normal, d anomalous.  The anomalies are a tight
  cluster 10 % strong inside the training data: density methods learn them as normal, so
  AUROCs near or below 0.5 here are the data's, not a detector's (the reference
  methods fail the same way).

The reference is the better of an isolation forest and 5-NN distance fitted on the same
contaminated train part, the two strongest peers on adbench-unsup.
"""
from __future__ import annotations

import numpy as np
from sklearn import datasets
from sklearn.ensemble import IsolationForest
from sklearn.metrics import roc_auc_score
from sklearn.neighbors import NearestNeighbors

PROTOCOL = "sklearn-unsup"
DATASETS = ("breast_cancer", "wine", *(f"digits_{d}" for d in range(10)),
            *(f"digits_not_{d}" for d in (0, 3, 6, 9)))
ANOMALY_SHARE = 0.1


def cases() -> list[dict]:
    """One case per data set, seed 0."""
    return [{"dataset": name, "seed": 0} for name in DATASETS]


def _table(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(X, y) with y = 1 for the anomalies kept."""
    if name == "breast_cancer":
        X, c = datasets.load_breast_cancer(return_X_y=True)
        normal = c == 1
    elif name == "wine":
        X, c = datasets.load_wine(return_X_y=True)
        normal = c != 2
    elif name.startswith("digits_not_"):
        X, c = datasets.load_digits(return_X_y=True)
        normal = c != int(name.rsplit("_", 1)[1])
    elif name.startswith("digits_"):
        X, c = datasets.load_digits(return_X_y=True)
        normal = c == int(name.rsplit("_", 1)[1])
    else:
        raise ValueError(f"unknown data set {name!r}; one of {', '.join(DATASETS)}")
    anomalies = np.flatnonzero(~normal)
    kept = np.random.default_rng(0).choice(
        anomalies, min(len(anomalies), int(ANOMALY_SHARE * normal.sum())), replace=False)
    rows = np.sort(np.r_[np.flatnonzero(normal), kept])
    return X[rows].astype(np.float64), (~normal[rows]).astype(np.int64)


def load(P, dataset: str, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(X_train, X_test, y_test) by the shared protocols module ``P``'s adbench-unsup rules."""
    X, y = _table(dataset)
    train, test = P.stratified_split(y, P.TAB_TEST_FRAC, seed)
    X_train, X_test = P._standardize(X[train], X[test])
    return X_train, X_test, y[test]


def reference(P, dataset: str, seed: int) -> tuple[str, float]:
    """(name, AUROC) of the better reference method on the case."""
    X_train, X_test, y = load(P, dataset, seed)
    forest = IsolationForest(random_state=0).fit(X_train)
    knn = NearestNeighbors(n_neighbors=5).fit(X_train)
    aurocs = {"IForest": roc_auc_score(y, -forest.score_samples(X_test)),
              "KNN": roc_auc_score(y, knn.kneighbors(X_test)[0][:, -1])}
    best = max(aurocs, key=aurocs.get)
    return best, round(float(aurocs[best]), 3)
