"""The ``vigil`` command line.

Exit codes: 0 success; 1 failure (bad model, bad input, run error); 2 usage error;
3 finished but dead letters above --max-bad-fraction (nothing published);
4 data-quality check failed; 5 model trained but a promotion gate failed.
Options can also come from a YAML file (--config) and from VIGIL_<COMMAND>_<OPTION>
environment variables; the command line wins over both.
"""
from __future__ import annotations

import atexit
import logging
import os
import re
import sys
import threading
import traceback

import click
import yaml

from vigil.schemas import __version__

EXIT_BAD_RECORDS, EXIT_DQ_FAILED, EXIT_GATE_FAILED = 3, 4, 5


def _load_config(ctx: click.Context, param, path):
    """Eager --config: a YAML mapping of option names becomes the command's defaults."""
    if not path:
        return path
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise click.BadParameter(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise click.BadParameter(f"{path} must hold a mapping of option names")
    known = {p.name for p in ctx.command.params}
    unknown = sorted(set(k.replace("-", "_") for k in data) - known)
    if unknown:
        raise click.BadParameter(f"{path}: unknown option(s) {', '.join(unknown)}")
    ctx.default_map = {**(ctx.default_map or {}), **{k.replace("-", "_"): v for k, v in data.items()}}
    return path


config_option = click.option("--config", type=click.Path(dir_okay=False), is_eager=True,
                             expose_value=False, callback=_load_config,
                             help="YAML file of option values (command line wins).")


class SectionedCommand(click.Command):
    """A command whose --help lists its options under headings (``sections``: title ->
    parameter names); the rest go under "Other options"."""

    def __init__(self, *args, sections: dict[str, tuple[str, ...]] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.sections = sections or {}

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        params = self.get_params(ctx)
        placed = {name for names in self.sections.values() for name in names}
        groups = [(title, [p for p in params if p.name in names])
                  for title, names in self.sections.items()]
        groups.append(("Other options", [p for p in params if p.name not in placed]))
        for title, members in groups:
            rows = [r for r in (p.get_help_record(ctx) for p in members) if r]
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)


class _Failure(Exception):
    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def _run(ctx: click.Context, fn):
    """Run fn; known errors become one line on stderr and an exit code."""
    from vigil.jobs.specs import SpecError
    from vigil.models.bundle import BundleError
    from vigil.models.config import ConfigError
    from vigil.models.registry import RegistryError
    from vigil.pipeline.commit import RunError, storage_failure
    from vigil.pipeline.preflight import InputError
    try:
        return fn()
    except RunError as exc:
        _fail(ctx, str(exc), exc.exit_code)
    except (InputError, SpecError, ConfigError) as exc:
        _fail(ctx, str(exc), 2)
    except (BundleError, RegistryError, ValueError, _Failure) as exc:
        _fail(ctx, str(exc), getattr(exc, "code", 1))
    except BrokenPipeError:
        raise           # stdout closed by a reader such as `head`: not a storage error
    except Exception as exc:  # noqa: BLE001 - storage errors become one line, others propagate
        failure = storage_failure(exc)
        if failure is None:
            raise
        # Disk full, permissions, a vanished bucket, an unknown scheme.
        _fail(ctx, f"storage: {failure}", 1)


def _fail(ctx: click.Context, message: str, code: int):
    if ctx.find_root().obj.get("verbose"):
        traceback.print_exc()
    click.echo(f"vigil: error: {message}", err=True)
    ctx.exit(code)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "auto_envvar_prefix": "VIGIL"})
@click.option("--verbose", is_flag=True, help="Show tracebacks and library logs.")
@click.option("--quiet", is_flag=True,
              help="No progress lines (training epochs, scoring rate): for cron; results and "
                   "errors still print.")
@click.version_option(__version__, "--version", prog_name="vigil", message="%(prog)s %(version)s")
@click.pass_context
def cli(ctx: click.Context, verbose: bool, quiet: bool):
    """vigil: batch anomaly detection with a VAE and a denoising autoencoder.

    \b
    Train a model, score files with it on Apache Beam, and read the Parquet results:
      vigil train --input 'data/train/*.tfrecord' --registry models --name digits
      vigil score --input 'data/new/*.tfrecord' --registry models --name digits --output runs
      vigil demo                      # both, on data that ships with scikit-learn
    """
    ctx.obj = {"verbose": verbose}
    # Beam and GX log a worker's or a page's error as a traceback before it reaches vigil,
    # which then says it in one line; Beam's portable runner logs a failed job's messages
    # on the root logger.  Without --verbose only vigil's own loggers speak.
    logging.basicConfig(level=logging.INFO if verbose else logging.CRITICAL,
                        format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("vigil").setLevel(logging.INFO if verbose else logging.WARNING)
    for name in ("vigil.pipeline", "vigil.train", "vigil.demo"):
        logging.getLogger(name).setLevel(logging.WARNING if quiet else logging.INFO)
    if not verbose:
        for name in ("apache_beam", "great_expectations"):
            logging.getLogger(name).setLevel(logging.CRITICAL)


from vigil.jobs import commands, model_commands  # noqa: E402,F401 - register the subcommands

# Lines TensorFlow's and CUDA's native code write to stderr at start-up (absl and tsl
# logging, which TF_CPP_MIN_LOG_LEVEL does not always reach).
NATIVE_NOISE = re.compile(rb"^(WARNING: All log messages before absl::InitializeLog|"
                          rb"[IWE]\d{4} [\d:.]+ +\d+ \S+\.(cc|h):\d+\])")


def _filter_native_stderr() -> None:
    """Route fd 2 through a filter that drops native start-up noise and keeps the rest.

    Native code writes to the file descriptor, below Python's logging, so the filter sits
    on the descriptor; worker processes Beam starts inherit it.
    """
    real = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def pump():
        with os.fdopen(read_end, "rb") as pipe, os.fdopen(real, "wb", buffering=0) as out:
            for line in pipe:
                if not NATIVE_NOISE.match(line):
                    out.write(line)
    thread = threading.Thread(target=pump, daemon=True)
    thread.start()

    def restore():
        sys.stderr.flush()
        os.close(2)               # the last write end: the pump sees EOF and drains
        thread.join(timeout=5)
    atexit.register(restore)


def main() -> None:
    # The command line's TensorFlow settings, before TF loads: no C++ start-up chatter, and
    # the kernels that keep a record's scores independent of its batch (vigil.pipeline).
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    if "--verbose" not in sys.argv[1:]:
        _filter_native_stderr()
    try:
        cli.main(prog_name="vigil")
    except BrokenPipeError:
        # The reader of our stdout went away (`vigil models ls | head -1`); say nothing more.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)


if __name__ == "__main__":
    main()
