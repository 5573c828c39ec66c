"""The TensorFlow settings vigil runs with, applied by entry points, never by an import.

A run's scores must not depend on how its records were batched or on the machine's thread
count: a re-run, the multi-process runner and a notebook's ``Detector.score`` give the same
bits.  ``Scorer`` runs every call on a block of fixed size, which takes the batch out of
the kernels' choices; of TensorFlow's two CPU kernel sets, oneDNN's then give a record
the same bits at any position in its block and with any number of threads, while Eigen's
convolutions change a record's last bits with the thread count (docs/design.md), so vigil
asks for oneDNN (TensorFlow's own default on x86 Linux, and what bfloat16 scoring needs).
vigil's networks are tf-keras (Keras 2) models, imported as ``tf_keras``; TensorFlow
still imports Keras 3 (and, through it, scikit-learn) for its own ``tf.keras`` unless
``TF_USE_LEGACY_KERAS`` points that name at tf-keras, about a second of every process's
start-up spent on a library vigil never calls (docs/benchmarks.md, "Fixed costs").
TensorFlow reads these settings once, when it is first imported, so they are applied by what
runs before that: ``vigil``'s console script, the test suite, and on Beam workers
``vigil.pipeline.worker_boot`` (a ``--beam_plugins`` module).  A setting the environment
already has is kept (``TF_USE_LEGACY_KERAS=0`` keeps Keras 3 as ``tf.keras`` for other code
in the same process).
"""
from __future__ import annotations

import os
from collections.abc import MutableMapping

SCORING_ENV = {"TF_ENABLE_ONEDNN_OPTS": "1", "TF_USE_LEGACY_KERAS": "1"}


def apply_scoring_env(environ: MutableMapping[str, str] = os.environ) -> None:
    """Set each of ``SCORING_ENV`` that ``environ`` does not set already (before TensorFlow loads)."""
    for name, value in SCORING_ENV.items():
        environ.setdefault(name, value)
