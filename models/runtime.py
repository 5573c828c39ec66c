"""The TensorFlow settings vigil's scores depend on, applied by entry points, never by an import.

TensorFlow's oneDNN kernels make a record's float result depend on its position in a
batch, and a run's scores must not depend on how its records were batched (a re-run, the
multi-process runner and a notebook's ``Detector.score`` give the same bits), so vigil asks
for the Eigen kernels.  TensorFlow reads the setting once, when it is first imported, so it
is applied by what runs before that: ``vigil``'s console script, the test suite, and on
Beam workers ``vigil.pipeline.worker_boot`` (a ``--beam_plugins`` module).  A setting the
environment already has is kept: ``TF_ENABLE_ONEDNN_OPTS=1`` trades that property for speed.
"""
from __future__ import annotations

import os
from collections.abc import MutableMapping

SCORING_ENV = {"TF_ENABLE_ONEDNN_OPTS": "0"}


def apply_scoring_env(environ: MutableMapping[str, str] = os.environ) -> None:
    """Set each of ``SCORING_ENV`` that ``environ`` does not set already (before TensorFlow loads)."""
    for name, value in SCORING_ENV.items():
        environ.setdefault(name, value)
