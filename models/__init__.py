"""vigil's models: tf-keras only, no Beam.

VAE and denoising AE (dense for features, convolutional for images), their losses, the
compiled scoring function, conformal calibration, the model bundle and the registry.
Everything here is usable from a notebook.
"""
import os as _os

from vigil.schemas import __version__  # noqa: F401 - vigil's version, from the installed metadata

# TensorFlow's C++ start-up chatter is noise for vigil's users; set before TF loads.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# oneDNN kernels make a record's float result depend on its position in the batch; vigil
# promises bit-identical scores for a record in any batch, so it uses TF's Eigen kernels.
_os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
