"""Only vigil's own errors become one line; anything else is a bug and shows its traceback."""
from __future__ import annotations

import click
from click.testing import CliRunner

from vigil.jobs.errors import EXIT_BAD_RECORDS, EXIT_FAILURE, EXIT_USAGE, run_guarded
from vigil.models.config import ConfigError, DataError
from vigil.pipeline.commit import BadRecordsError


def _invoke(exc: BaseException):
    @click.command()
    @click.pass_context
    def command(ctx):
        def body():
            raise exc
        run_guarded(ctx, body)
    return CliRunner().invoke(command, [], obj={})


def test_vigils_errors_are_one_line_with_their_exit_code():
    for exc, code in [(ConfigError("--batch-size 0: must be >= 1"), EXIT_USAGE),
                      (DataError("only 9 normal records"), EXIT_FAILURE),
                      (BadRecordsError("12 of 40 records dead-lettered"), EXIT_BAD_RECORDS)]:
        res = _invoke(exc)
        assert res.exit_code == code, (exc, res.output)
        assert res.output == f"vigil: error: {exc}\n"


def test_any_other_error_is_a_bug_with_its_traceback():
    res = _invoke(KeyError("calibration"))
    assert res.exit_code == EXIT_FAILURE
    assert "Traceback (most recent call last)" in res.output
    assert res.output.rstrip().splitlines()[-1] == (
        "vigil: internal error: KeyError: 'calibration'; this is a bug in vigil: please report it "
        "to vigil's issue tracker with the traceback above")
