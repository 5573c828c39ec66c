"""The ``vigil`` command line.

Exit codes are defined, with what each means, in ``vigil.jobs.errors``.
Options can also come from a YAML file (--config) and from VIGIL_<COMMAND>_<OPTION>
environment variables; the command line wins over both.
"""
from __future__ import annotations

import atexit
import logging
import os
import re
import signal
import sys
import threading

import click

from vigil.jobs.command_kit import check_environment
from vigil.jobs.errors import EXIT_TERMINATED, Terminated
from vigil.models.runtime import apply_scoring_env
from vigil.schemas import __version__


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
    check_environment(ctx, os.environ)
    # Beam and GX log a worker's or a page's error as a traceback before it reaches vigil,
    # which then says it in one line; Beam's portable runner logs a failed job's messages
    # on the root logger, and dask sets its own loggers' levels when it is imported.
    # Without --verbose only vigil's own loggers speak.
    logging.basicConfig(level=logging.INFO if verbose else logging.CRITICAL,
                        format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("vigil").setLevel(logging.INFO if verbose else logging.WARNING)
    for name in ("vigil.pipeline", "vigil.train", "vigil.demo"):
        logging.getLogger(name).setLevel(logging.WARNING if quiet else logging.INFO)
    if not verbose:
        for handler in logging.root.handlers:
            handler.addFilter(_only_vigil)


def _only_vigil(record: logging.LogRecord) -> bool:
    """The console handler's filter without --verbose: vigil's own records only."""
    return record.name == "vigil" or record.name.startswith("vigil.")


from vigil.jobs import commands, model_commands  # noqa: E402 - the subcommands, after the group

for _command in (commands.train, commands.score, commands.run_spec, commands.evaluate,
                 commands.report, commands.demo, model_commands.models):
    cli.add_command(_command)

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


def _terminate(signum: int, frame) -> None:
    raise Terminated(f"stopped by {signal.Signals(signum).name}")


def main() -> None:
    """The ``vigil`` console script: TensorFlow's settings, native log filtering, then click."""
    # Before TF loads: no C++ start-up chatter, and the kernels that keep a record's scores
    # independent of its batch (vigil.models.runtime).
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    apply_scoring_env()
    if "--verbose" not in sys.argv[1:]:
        _filter_native_stderr()
    # A scheduler stops a job with SIGTERM (a timeout, a pod shutting down), and the next run
    # may start on another host, which cannot take over a lock left behind: stop like on any
    # other failure, staging folder and lock removed.
    signal.signal(signal.SIGTERM, _terminate)
    try:
        cli.main(prog_name="vigil")
    except Terminated as exc:       # before a command's body took over (imports, options)
        click.echo(f"vigil: error: {exc}", err=True)
        sys.exit(EXIT_TERMINATED)
    except BrokenPipeError:
        # The reader of our stdout went away (`vigil models ls | head -1`); say nothing more.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)


if __name__ == "__main__":
    main()
