"""vigil's models: tf-keras only, no Beam.

VAE and denoising AE (dense for features, convolutional for images), their losses, the
compiled scoring function, conformal calibration, the model bundle, the registry, and
``Detector``, the estimator (fit / score / save / load) ``vigil train`` and ``vigil score``
run underneath.  Importing it sets nothing process-wide: TensorFlow's settings are the
entry points' (see ``vigil.models.detector`` for the one that keeps scores bit-identical).
"""
from vigil.schemas import __version__  # noqa: F401 - vigil's version, from the installed metadata


def __getattr__(name: str):
    # Detector imports TensorFlow; ``import vigil.models.config`` (the CLI's option
    # checks) must stay light, so it is loaded on first use.
    if name == "Detector":
        from vigil.models.detector import Detector
        return Detector
    raise AttributeError(f"module 'vigil.models' has no attribute {name!r}")
