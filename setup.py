"""vigil-anomaly: batch anomaly detection with VAEs and denoising autoencoders on Apache Beam.

The repository keeps the design's four top-level folders; they install as one import
package, ``vigil`` (``vigil.schemas``, ``vigil.models``, ``vigil.pipeline``, ``vigil.jobs``),
so nothing with a generic name lands in site-packages.  Metadata and dependencies are in
pyproject.toml.  This file is also what Dataflow workers install (``--setup_file
./setup.py``), so every module and data file the code opens must be found from here.
"""
from setuptools import find_namespace_packages, setup

LAYERS = ("schemas", "models", "pipeline", "jobs")

# Every folder below a layer is found, data-only ones (jobs/specs) too, so a new
# subpackage can never be left out of the wheel or the sdist again.
FOLDERS = find_namespace_packages(include=[f"{layer}{sub}" for layer in LAYERS for sub in ("", ".*")],
                                  exclude=["*.__pycache__"])

setup(
    packages=[f"vigil.{folder}" for folder in FOLDERS],
    package_dir={f"vigil.{layer}": layer for layer in LAYERS},
)
