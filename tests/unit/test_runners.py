"""Which runner a score runs on, and which paths its workers can be given."""
from __future__ import annotations

import pytest

from vigil.models.config import ConfigError
from vigil.pipeline.config import ScoreConfig
from vigil.pipeline.options import StandardOptions, pipeline_options

LOCAL = ScoreConfig(inputs=("in/*.parquet",), registry="models", name="m", output="runs")
REMOTE = ScoreConfig(inputs=("gs://b/in/*.parquet",), registry="gs://b/models", name="m",
                     output="gs://b/runs")


def _runner(config: ScoreConfig, *args: str) -> str:
    return pipeline_options(config, list(args)).view_as(StandardOptions).runner


@pytest.mark.parametrize("name", ["DaskRunner", "dask", "apache_beam.runners.dask.dask_runner.DaskRunner"])
def test_dask_names_run_on_vigils_corrected_runner(name):
    assert _runner(LOCAL, "--runner", name) == "vigil.pipeline.dask_runner.DaskRunner"


def test_local_runners_read_local_paths():
    assert _runner(LOCAL) == "FnApiRunner"
    assert _runner(LOCAL, "--runner", "DirectRunner") == "DirectRunner"
    assert _runner(LOCAL, "--runner", "DaskRunner").endswith("DaskRunner")   # no scheduler: a LocalCluster


@pytest.mark.parametrize("args", [["--runner", "PortableRunner", "--job_endpoint", "host:8099"],
                                  ["--runner", "FlinkRunner"], ["--runner", "SparkRunner"],
                                  ["--runner", "DataflowRunner"],
                                  ["--runner", "DaskRunner", "--dask_client_address", "tcp://h:8786"]])
def test_runners_with_remote_workers_refuse_local_paths(args):
    with pytest.raises(ConfigError, match="runs workers that may not see this machine's files") as err:
        pipeline_options(LOCAL, args)
    assert LOCAL.inputs[0] in str(err.value) and "--workers-see-local-paths" in str(err.value)
    assert _runner(REMOTE, *args)          # storage every worker reads
    shared = ScoreConfig(**{**vars(LOCAL), "workers_see_local_paths": True})
    assert _runner(shared, *args)


def test_a_refused_runner_stops_the_cli_before_anything_is_written(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from vigil.jobs.cli import cli
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(cli, ["score", "--input", "in/*.parquet", "--registry", "models",
                                   "--name", "m", "--output", "runs", "--runner", "FlinkRunner"])
    assert res.exit_code == 2, res.output
    assert res.output.strip().count("\n") == 0 and f"{tmp_path}/in/*.parquet is a local path" in res.output
    assert list(tmp_path.iterdir()) == []
