"""vigil's scoring options on Beam: the ``PipelineOptions`` view of ``ScoreConfig``, the runner.

Every vigil flag is prefixed ``vigil_`` inside Beam's option namespace, so none can shadow
one of Beam's own (``--runner``, ``--project``, ``--temp_location`` ...), and the job's
settings show up in a runner's UI with the rest of the pipeline options.
"""
from __future__ import annotations

from dataclasses import fields

from apache_beam.options.pipeline_options import PipelineOptions, SetupOptions, StandardOptions

from vigil.models.config import ConfigError
from vigil.pipeline.config import ScoreConfig

LOCAL_RUNNER = "FnApiRunner"   # DirectRunner in Beam 2.77 first tries to download Prism
WORKER_BOOT = "vigil.pipeline.worker_boot"   # imported by every SDK worker as it starts


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
    own (Dask) are imported, where they are installed, only if an argument is not known
    without them: importing Dask costs every run a quarter of a second.
    """
    import importlib

    unknown, known = _parse_known(beam_args)
    if unknown:
        for module in ("apache_beam.runners.dask.dask_runner",):
            try:
                importlib.import_module(module)
            except ImportError:
                pass
        unknown, known = _parse_known(beam_args)
    return unknown, known


def _parse_known(beam_args: list[str]) -> tuple[list[str], list[str]]:
    """Parse ``beam_args`` with every ``PipelineOptions`` class registered so far."""
    from apache_beam.options.pipeline_options import _BeamArgumentParser
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

    Every SDK worker imports ``vigil.pipeline.worker_boot`` as it starts (``--beam_plugins``):
    vigil's TensorFlow settings, before a DoFn's unpickling loads TensorFlow.

    A runner whose workers may run on other machines is refused local paths, which
    those workers could not read, unless the config says they can (a shared mount, or a
    single-host engine).
    """
    options = PipelineOptions(list(beam_args) + config.to_flags())
    setup = options.view_as(SetupOptions)
    setup.beam_plugins = [*(setup.beam_plugins or []), WORKER_BOOT]
    runner = resolve_runner(options)
    local = config.local_paths()
    if local and not config.workers_see_local_paths and not runs_on_this_host(options):
        raise ConfigError(
            f"--runner {runner.rsplit('.', 1)[-1]} runs workers that may not see this machine's "
            f"files, and {local[0]} is a local path: put inputs, registry and output on storage "
            f"every worker reads (gs://, s3://, hdfs://), or pass --workers-see-local-paths if "
            f"they do (a shared mount, or workers on this host)")
    return options
