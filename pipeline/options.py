"""vigil's scoring options: a Beam ``PipelineOptions`` view plus the validated dataclass.

Every vigil flag is prefixed ``vigil_`` inside Beam's option namespace, so none can shadow
one of Beam's own (``--runner``, ``--project``, ``--temp_location`` ...), and the job's
settings show up in a runner's UI with the rest of the pipeline options.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from vigil.models.config import ConfigError

LOCAL_RUNNER = "FnApiRunner"   # DirectRunner in Beam 2.77 first tries to download Prism


def absolute_uri(path: str) -> str:
    """A local path made absolute against the launching folder; a URI (gs://...) as it is.

    Resolved once at launch: workers, the report step and later readers of the manifest
    may run in another working directory.
    """
    return path if "://" in path else os.path.abspath(path)


class VigilOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--vigil_input", action="append", default=None,
                            help="input glob (repeatable)")
        parser.add_argument("--vigil_registry", default=None, help="model registry root")
        parser.add_argument("--vigil_name", default=None, help="model name in the registry")
        parser.add_argument("--vigil_model_version", default=None, help="version (default: production)")
        parser.add_argument("--vigil_output", default=None, help="output root")
        parser.add_argument("--vigil_run_id", default=None, help="run id (default: UTC timestamp)")
        parser.add_argument("--vigil_overwrite", action="store_true", default=False)
        parser.add_argument("--vigil_target_fpr", type=float, default=None,
                            help="target FPR (default: the model's calibrated one)")
        parser.add_argument("--vigil_batch_size", type=int, default=256)
        parser.add_argument("--vigil_max_bad_fraction", type=float, default=0.05)
        parser.add_argument("--vigil_format", default="auto")
        parser.add_argument("--vigil_id_column", default="id")
        parser.add_argument("--vigil_carry_column", action="append", default=None)
        parser.add_argument("--vigil_max_pixels", type=int, default=50_000_000)
        parser.add_argument("--vigil_max_record_bytes", type=int, default=64 << 20)
        parser.add_argument("--vigil_max_files", type=int, default=100_000)
        parser.add_argument("--vigil_num_shards", type=int, default=0,
                            help="scores/dead-letter files per run (0: the runner decides)")
        parser.add_argument("--vigil_allow_uncounted_files", action="store_true", default=False,
                            help="publish runs with files that failed before being counted")


@dataclass(frozen=True)
class ScoreConfig:
    """Everything one scoring run needs, validated."""
    inputs: tuple[str, ...]
    registry: str
    name: str
    output: str
    model_version: str | None = None
    run_id: str | None = None
    overwrite: bool = False
    target_fpr: float | None = None     # None: the rate the model was calibrated for
    batch_size: int = 256
    max_bad_fraction: float = 0.05
    format: str = "auto"
    id_column: str = "id"
    carry_columns: tuple[str, ...] = ("label",)
    max_pixels: int = 50_000_000
    max_record_bytes: int = 64 << 20
    max_files: int = 100_000
    num_shards: int = 0             # output files per table; 0 lets the runner decide
    allow_uncounted_files: bool = False   # publish although a failed file's records are uncounted

    def __post_init__(self):
        if not self.inputs:
            raise ConfigError("no --input given")
        object.__setattr__(self, "inputs", tuple(absolute_uri(i) for i in self.inputs))
        for name in ("registry", "output"):
            object.__setattr__(self, name, absolute_uri(getattr(self, name)))
        if self.target_fpr is not None and not 0 < self.target_fpr < 0.5:
            raise ConfigError(f"--target-fpr {self.target_fpr}: must be in (0, 0.5)")
        if not 0 <= self.max_bad_fraction <= 1:
            raise ConfigError(f"--max-bad-fraction {self.max_bad_fraction}: must be in [0, 1]")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size {self.batch_size}: must be >= 1")
        for name in ("max_pixels", "max_record_bytes", "max_files"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)}: must be >= 1")
        if self.num_shards < 0:
            raise ConfigError(f"--num-shards {self.num_shards}: must be >= 0 (0: the runner decides)")

    def to_flags(self) -> list[str]:
        """The same settings as ``--vigil_*`` flags, for PipelineOptions."""
        flags = [f"--vigil_input={i}" for i in self.inputs]
        flags += [f"--vigil_registry={self.registry}", f"--vigil_name={self.name}",
                  f"--vigil_output={self.output}",
                  f"--vigil_batch_size={self.batch_size}",
                  f"--vigil_max_bad_fraction={self.max_bad_fraction}",
                  f"--vigil_format={self.format}", f"--vigil_id_column={self.id_column}",
                  f"--vigil_max_pixels={self.max_pixels}",
                  f"--vigil_max_record_bytes={self.max_record_bytes}",
                  f"--vigil_max_files={self.max_files}",
                  f"--vigil_num_shards={self.num_shards}"]
        flags += [f"--vigil_carry_column={c}" for c in self.carry_columns]
        if self.model_version:
            flags.append(f"--vigil_model_version={self.model_version}")
        if self.run_id:
            flags.append(f"--vigil_run_id={self.run_id}")
        if self.overwrite:
            flags.append("--vigil_overwrite")
        if self.target_fpr is not None:
            flags.append(f"--vigil_target_fpr={self.target_fpr}")
        if self.allow_uncounted_files:
            flags.append("--vigil_allow_uncounted_files")
        return flags

    @classmethod
    def from_options(cls, options: PipelineOptions) -> "ScoreConfig":
        v = options.view_as(VigilOptions)
        return cls(tuple(v.vigil_input or ()), v.vigil_registry, v.vigil_name, v.vigil_output,
                   v.vigil_model_version, v.vigil_run_id, v.vigil_overwrite, v.vigil_target_fpr,
                   v.vigil_batch_size, v.vigil_max_bad_fraction, v.vigil_format,
                   v.vigil_id_column, tuple(v.vigil_carry_column or ("label",)),
                   v.vigil_max_pixels, v.vigil_max_record_bytes, v.vigil_max_files,
                   v.vigil_num_shards, v.vigil_allow_uncounted_files)


def unknown_beam_args(beam_args: list[str]) -> tuple[list[str], list[str]]:
    """(arguments no registered Beam ``PipelineOptions`` class defines, every Beam option).

    Beam itself only warns about such arguments and drops them, so a mistyped option
    would silently run with its default.  Runner modules that define options of their
    own (Dask) are imported first where they are installed.
    """
    import importlib

    from apache_beam.options.pipeline_options import _BeamArgumentParser
    for module in ("apache_beam.runners.dask.dask_runner",):
        try:
            importlib.import_module(module)
        except ImportError:
            pass
    parser = _BeamArgumentParser(allow_abbrev=False)
    classes = {str(cls): cls for cls in PipelineOptions.__subclasses__()}
    for cls in classes.values():
        cls._add_argparse_args(parser)  # noqa: SLF001 - how Beam itself collects its options
    _, unknown = parser.parse_known_args(list(beam_args))
    known = sorted({opt for action in parser._actions for opt in action.option_strings})
    return unknown, known


def pipeline_options(config: ScoreConfig, beam_args: list[str]) -> PipelineOptions:
    """Beam's options from the user's Beam flags plus vigil's; local runs stay offline."""
    options = PipelineOptions(list(beam_args) + config.to_flags())
    standard = options.view_as(StandardOptions)
    if standard.runner is None:
        standard.runner = LOCAL_RUNNER
    return options
