"""vigil's Apache Beam pipeline: sources, decode and validate, RunInference, sinks, commit.

The one process-wide setting vigil makes is here, because a Beam worker runs no vigil
entry point and this package is the first of vigil's it imports: TensorFlow's oneDNN
kernels make a record's float result depend on its position in a batch, and a run's
scores must not depend on how its records were batched, so the Eigen kernels are asked
for (``TF_ENABLE_ONEDNN_OPTS=0``) unless the environment already says otherwise.  It
takes effect only where TensorFlow is not yet imported.
"""
import os as _os

_os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
