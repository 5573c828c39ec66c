"""vigil's Apache Beam pipeline: sources, decode and validate, RunInference, sinks, commit.

Importing it sets nothing process-wide.  Beam workers get vigil's TensorFlow settings
from ``vigil.pipeline.worker_boot``, which Beam imports at worker start.
"""
