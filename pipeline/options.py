"""vigil's scoring options: a Beam ``PipelineOptions`` view plus the validated dataclass.

Every vigil flag is prefixed ``vigil_`` inside Beam's option namespace, so none can shadow
one of Beam's own (``--runner``, ``--project``, ``--temp_location`` ...), and the job's
settings show up in a runner's UI with the rest of the pipeline options.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, fields

from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from vigil.models.config import ConfigError

LOCAL_RUNNER = "FnApiRunner"   # DirectRunner in Beam 2.77 first tries to download Prism


def absolute_uri(path: str) -> str:
    """A local path made absolute against the launching folder; a URI (gs://...) as it is.

    Resolved once at launch: workers, the report step and later readers of the manifest
    may run in another working directory.
    """
    return path if "://" in path else os.path.abspath(path)


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
    workers_see_local_paths: bool = False  # a non-local runner's workers read this host's files
    worker_start_timeout: float = 600.0    # seconds the job may take to start its first worker
    model_copies: int = 0           # model copies per worker process (0: Beam's default, one each)

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
        if self.worker_start_timeout <= 0:
            raise ConfigError(f"--worker-start-timeout {self.worker_start_timeout:g}: must be > 0 seconds")
        if self.model_copies < 0:
            raise ConfigError(f"--model-copies {self.model_copies}: must be >= 0 (0: one per process)")

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


class VigilOptions(PipelineOptions):
    """``ScoreConfig``'s fields in Beam's option namespace, each prefixed ``vigil_``."""

    @classmethod
    def _add_argparse_args(cls, parser):
        for f in fields(ScoreConfig):
            if f.type.startswith("tuple"):
                parser.add_argument(f"--vigil_{f.name}", action="append", default=None)
            elif f.type == "bool":
                parser.add_argument(f"--vigil_{f.name}", action="store_true", default=False)
            else:
                parser.add_argument(f"--vigil_{f.name}", default=None)


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


# Runners vigil accepts by a short name.  Beam's own DaskRunner loses records and sinks
# (vigil.pipeline.dask_runner says how), so its dotted path maps to vigil's corrected one.
RUNNER_ALIASES = {
    "dask": "vigil.pipeline.dask_runner.DaskRunner",
    "daskrunner": "vigil.pipeline.dask_runner.DaskRunner",
    "apache_beam.runners.dask.dask_runner.daskrunner": "vigil.pipeline.dask_runner.DaskRunner",
}
# Runners whose workers are processes of this machine: they read its local paths.
LOCAL_RUNNERS = {"fnapirunner", "directrunner", "bundlebaseddirectrunner", "switchingdirectrunner",
                 "prismrunner", "interactiverunner"}


def resolve_runner(options: PipelineOptions) -> str:
    """Set the runner vigil runs on (short names resolved, the local one by default)."""
    standard = options.view_as(StandardOptions)
    runner = standard.runner or LOCAL_RUNNER
    standard.runner = RUNNER_ALIASES.get(runner.lower(), runner)
    if standard.runner.endswith("dask_runner.DaskRunner"):
        try:
            import dask.distributed  # noqa: F401
        except ImportError as exc:
            raise ConfigError("--runner DaskRunner needs dask.distributed: "
                              "pip install 'vigil-anomaly[dask]'") from exc
    return standard.runner


def runs_on_this_host(options: PipelineOptions) -> bool:
    """Whether every worker of the chosen runner is a process on this machine."""
    runner = options.view_as(StandardOptions).runner
    name = runner.rsplit(".", 1)[-1].lower()
    if name == "daskrunner":
        from apache_beam.runners.dask.dask_runner import DaskOptions

        # Without a scheduler to join, the DaskRunner starts a LocalCluster here.
        dask = options.view_as(DaskOptions)
        return not (dask.address or dask.scheduler_file)
    return name in LOCAL_RUNNERS


def pipeline_options(config: ScoreConfig, beam_args: list[str]) -> PipelineOptions:
    """Beam's options from the user's Beam flags plus vigil's; local runs stay offline.

    A runner whose workers may run on other machines is refused local paths, which
    those workers could not read, unless the config says they can (a shared mount, or a
    single-host engine).
    """
    options = PipelineOptions(list(beam_args) + config.to_flags())
    runner = resolve_runner(options)
    local = config.local_paths()
    if local and not config.workers_see_local_paths and not runs_on_this_host(options):
        raise ConfigError(
            f"--runner {runner.rsplit('.', 1)[-1]} runs workers that may not see this machine's "
            f"files, and {local[0]} is a local path: put inputs, registry and output on storage "
            f"every worker reads (gs://, s3://, hdfs://), or pass --workers-see-local-paths if "
            f"they do (a shared mount, or workers on this host)")
    return options
