"""vigil's entry points: the ``vigil`` CLI, training, scoring, demo."""
import vigil.models as _models  # noqa: F401 - sets TensorFlow's environment before TF loads
