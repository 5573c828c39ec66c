"""vigil's Apache Beam pipeline: sources, decode and validate, RunInference, sinks, commit."""
import vigil.models as _models  # noqa: F401 - sets TensorFlow's environment before TF loads
