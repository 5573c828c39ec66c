"""vigil's models: tf-keras only, no Beam.

VAE and denoising AE (dense for features, convolutional for images), their losses, the
compiled scoring function, conformal calibration, the model bundle and the registry.
Everything here is usable from a notebook.
"""
import os as _os

# TensorFlow's C++ start-up chatter is noise for vigil's users; set before TF loads.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
