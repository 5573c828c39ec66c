"""What a command prints and exits with when it fails: the only place exit codes live.

``pipeline`` and ``models`` raise vigil's own error types; this module maps each to one
line on stderr and an exit code.  Any other exception is a bug in vigil (or an unexpected
storage error, said in one line): it is printed with its traceback and a request to
report it.
"""
from __future__ import annotations

import traceback

import click

EXIT_OK = 0
EXIT_FAILURE = 1        # bad or damaged model, too few training rows, a run already writing, storage
EXIT_USAGE = 2          # bad option or value, glob matching nothing, missing column, existing run
EXIT_BAD_RECORDS = 3    # dead letters over --max-bad-fraction, or uncounted files; nothing published
EXIT_DQ_FAILED = 4      # a critical data-quality check failed (--fail-on-dq)
EXIT_GATE_FAILED = 5    # the model trained but a promotion gate failed
EXIT_TERMINATED = 143   # stopped by SIGTERM (a scheduler's timeout or shutdown), cleaned up first


class Failure(Exception):
    """A command's own failure: one line and an exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILURE):
        super().__init__(message)
        self.code = code


class Terminated(BaseException):
    """SIGTERM arrived (``vigil.jobs.cli``): raised where the process stands, so that every
    cleanup on the way out runs (a run's staging folder and lock are removed).  Not an
    ``Exception``, like ``KeyboardInterrupt``: a handler that dead-letters a record's error
    must not take it for one."""


def _terminated(exc: BaseException | None) -> bool:
    """Whether ``exc`` is, or was caused by, ``Terminated`` (Beam re-raises a step's error as
    another type, chained)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, Terminated):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def exit_code(exc: BaseException) -> int | None:
    """The exit code of one of vigil's error types; None for anything else."""
    from vigil.jobs.specs import SpecError
    from vigil.models.bundle import BundleError
    from vigil.models.config import ConfigError, DataError
    from vigil.models.registry import RegistryError
    from vigil.pipeline.commit import BadRecordsError, RunError
    from vigil.pipeline.preflight import InputError
    if _terminated(exc):
        return EXIT_TERMINATED
    if isinstance(exc, Failure):
        return exc.code
    if isinstance(exc, BadRecordsError):
        return EXIT_BAD_RECORDS
    if isinstance(exc, (InputError, SpecError, ConfigError)):
        return EXIT_USAGE
    if isinstance(exc, (RunError, BundleError, RegistryError, DataError)):
        return EXIT_FAILURE
    return None


def run_guarded(ctx: click.Context, fn):
    """Run a command's body; vigil's errors become one line on stderr and their exit code."""
    from vigil.pipeline.commit import storage_failure
    try:
        return fn()
    except (BrokenPipeError, click.ClickException, click.exceptions.Exit, click.Abort):
        raise           # a closed stdout (`| head`), or click's own usage errors and exits
    except Terminated as exc:
        fail(ctx, str(exc), EXIT_TERMINATED)
    except Exception as exc:  # noqa: BLE001 - mapped below; anything unknown is re-raised as a bug
        code = exit_code(exc)
        if code is not None:
            fail(ctx, str(exc), code)
        failure = storage_failure(exc)
        if failure is not None:         # disk full, permissions, a vanished bucket, a bad scheme
            fail(ctx, f"storage: {failure}", EXIT_FAILURE)
        traceback.print_exc()
        click.echo(f"vigil: internal error: {type(exc).__name__}: {exc}; this is a bug in vigil: "
                   f"please report it to vigil's issue tracker with the traceback above", err=True)
        ctx.exit(EXIT_FAILURE)


def fail(ctx: click.Context, message: str, code: int):
    """Print ``vigil: error: message`` (the traceback too with --verbose) and exit."""
    if (ctx.find_root().obj or {}).get("verbose"):
        traceback.print_exc()
    click.echo(f"vigil: error: {message}", err=True)
    ctx.exit(code)
