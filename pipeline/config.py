"""One scoring run's settings, each declared once: name, type, default, range and help.

``ScoreConfig`` is the single declaration of ``vigil score``'s options.  The command's
click options (``vigil.jobs.command_kit.options_from``), a job spec's ``options`` keys
(``vigil.jobs.specs``) and Beam's ``--vigil_*`` view (``vigil.pipeline.options``) are all
derived from its fields; the ranges below are checked here for every caller, the Python
API's included.  Nothing here imports Beam, so the command line starts fast.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields

from vigil.models.config import PRECISIONS, ConfigError, check_ranges, option

FORMATS = ("auto", "tfrecord-image", "tfrecord-features", "image", "parquet", "csv")
FORMAT_HELP = "Input format; auto: from each file's name (and a TFRecord's first record)."
ID_HELP = "Column (tables) or feature (TFRecords) holding each record's id."
# Records per scoring call when --batch-size is not given.  A table row costs little to
# score, so a batch's fixed Python and Beam work is shared over many rows; an image
# batch is already seconds of model time.
BATCH_SIZE = {"features": 2048, "image": 256}


def absolute_uri(path: str) -> str:
    """A local path made absolute against the launching folder; a URI (gs://...) as it is.

    Resolved once at launch: workers, the report step and later readers of the manifest
    may run in another working directory.
    """
    return path if "://" in path else os.path.abspath(path)


@dataclass(frozen=True, kw_only=True)
class ScoreConfig:
    """Everything one scoring run needs, validated."""
    inputs: tuple[str, ...] = field(metadata=option("Input glob (repeatable).", flag="--input",
                                                    required=True))
    registry: str = field(metadata=option("Model registry root.", required=True))
    name: str = field(metadata=option("Model name in the registry.", required=True))
    output: str = field(metadata=option("Output root; the run goes to OUTPUT/RUN_ID.", required=True))
    model_version: str | None = field(default=None, metadata=option("Version to use (default: production)."))
    run_id: str | None = field(default=None, metadata=option("Run id (default: UTC timestamp)."))
    overwrite: bool = field(default=False, metadata=option("Replace an existing run of the same id."))
    target_fpr: float | None = field(default=None, metadata=option(
        "False-positive rate is_anomaly is set at (default: the one the model was calibrated for; "
        "the smallest it can flag at, if several).", low=0, high=0.5, open_low=True, open_high=True))
    batch_size: int | None = field(default=None, metadata=option(
        f"Records the model scores at once (default: {BATCH_SIZE['features']} for tables, "
        f"{BATCH_SIZE['image']} for images; the scores do not depend on it).", low=1))
    precision: str = field(default="float32", metadata=option(
        "Compute precision of the VAE's decoder. bfloat16: image models score several times faster on "
        "CPUs with AMX (docs/benchmarks.md), VAE scores within a small tolerance of float32's; anomaly_score "
        "of images is unchanged; no faster for tables.", choices=PRECISIONS))
    max_bad_fraction: float = field(default=0.05, metadata=option(
        "Dead-lettered share of the records above which nothing is published (exit 3).", low=0, high=1))
    format: str = field(default="auto", metadata=option(FORMAT_HELP, choices=FORMATS))
    id_column: str = field(default="id", metadata=option(ID_HELP))
    carry_columns: tuple[str, ...] = field(default=("label",), metadata=option(
        "Label column carried through to the output (repeatable).", flag="--carry-column"))
    max_pixels: int = field(default=50_000_000, metadata=option(
        "Images declaring more pixels are dead-lettered unread.", low=1))
    max_record_bytes: int = field(default=64 << 20, metadata=option(
        "Records (or image files) larger than this are dead-lettered unread.", low=1))
    max_files: int = field(default=100_000, metadata=option(
        "The run stops before reading if the globs match more files.", low=1))
    num_shards: int = field(default=0, metadata=option("Parquet files per table (0: the runner decides).",
                                                       low=0))
    allow_uncounted_files: bool = field(default=False, metadata=option(
        "Publish although a file failed before its records could be counted (a TFRecord or CSV cut "
        "short, a Parquet file without footer)."))
    workers_see_local_paths: bool = field(default=False, metadata=option(
        "Let a runner with workers elsewhere (Portable, Dask with a scheduler, Dataflow) use local "
        "paths: they are on a mount every worker shares, or the workers run on this host."))
    worker_start_timeout: float = field(default=600.0, metadata=option(
        "Seconds a non-local job may take to start its first worker before it is cancelled (exit 1).",
        low=0, open_low=True))
    model_copies: int = field(default=0, metadata=option(
        "Model copies per machine, shared by its worker processes (Beam's model_copies; 0: one copy "
        "in every worker process).", low=0))

    def __post_init__(self):
        if not self.inputs:
            raise ConfigError("no --input given")
        object.__setattr__(self, "inputs", tuple(absolute_uri(i) for i in self.inputs))
        object.__setattr__(self, "carry_columns", tuple(self.carry_columns))
        for name in ("registry", "output"):
            object.__setattr__(self, name, absolute_uri(getattr(self, name)))
        check_ranges(self)

    def local_paths(self) -> list[str]:
        """The inputs, registry and output that name this machine's file system."""
        return [p for p in (*self.inputs, self.registry, self.output) if "://" not in p]

    def to_flags(self) -> list[str]:
        """The same settings as ``--vigil_*`` flags: they show with the job's options in a
        runner's UI (Dataflow's job page, Flink's), next to Beam's own."""
        flags = []
        for f in fields(self):
            value = getattr(self, f.name)
            for item in (value if isinstance(value, tuple) else (value,)):
                if item is not None and item is not False:
                    flags.append(f"--vigil_{f.name}" if item is True else f"--vigil_{f.name}={item}")
        return flags
