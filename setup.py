"""vigil-anomaly: batch anomaly detection with VAEs and denoising autoencoders on Apache Beam.

This one file is also what Dataflow workers install (``--setup_file ./setup.py``), so it
carries every package and pins the ranges that workers need.
"""
from setuptools import setup

setup(
    name="vigil-anomaly",
    version="0.1.0",
    description="Batch anomaly detection: VAE reconstruction probability, ELBO, IWAE log p(x) "
                "and denoising-AE error on Apache Beam, written as Parquet.",
    python_requires=">=3.11,<3.12",
    packages=["schemas", "models", "pipeline", "jobs"],
    package_data={"schemas": ["expectations/*.json"], "jobs": ["specs/*.yaml"]},
    install_requires=[
        "tensorflow>=2.21,<2.22",
        "tf-keras>=2.21,<2.22",
        "apache-beam[tfrecord]>=2.77,<2.78",
        "great-expectations>=1.24,<1.25",
        "pyarrow>=18,<26",
        "numpy>=2.0,<2.5",
        "protobuf>=6.31.1,<7",
        "click>=8.2,<9",
        "scikit-learn>=1.5,<2",
        "matplotlib>=3.8,<4",
        "pillow>=10,<13",
        "pyyaml>=6,<7",
    ],
    extras_require={"test": ["pytest>=8"]},
    entry_points={"console_scripts": ["vigil=jobs.cli:main"]},
)
