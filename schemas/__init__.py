"""Data contracts of vigil: Arrow schemas, dead-letter reasons, manifest formats.

This package depends on nothing else of vigil's (nor on TensorFlow or Beam), so every
other layer, and any downstream reader, can import it cheaply.  It also holds the one
reading of vigil's version, from the installed distribution's metadata.
"""
from importlib import metadata as _metadata

DISTRIBUTION = "vigil-anomaly"

try:
    __version__ = _metadata.version(DISTRIBUTION)
except _metadata.PackageNotFoundError:   # imported from a source tree that was never installed
    __version__ = "0+unknown"
