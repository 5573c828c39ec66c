"""Beam workers get vigil's TensorFlow settings from ``--beam_plugins``, not from an import.

An SDK worker (Dataflow, Flink, Spark, a portable job) is started by Beam's
``sdk_worker_main`` with the job's options; it imports the plugins before any DoFn is
unpickled.  Here that start runs for real (``create_harness`` in its dry-run mode stops
right after the plugins) in a process whose environment lacks vigil's settings, with
vigil's options encoded the way the PortableRunner sends them to workers.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

from vigil.models.runtime import SCORING_ENV

WORKER = """
import json, os, sys
from apache_beam.runners.portability.portable_runner import JobServiceHandle
from apache_beam.runners.worker import sdk_worker_main
from google.protobuf import json_format
from vigil.pipeline.config import ScoreConfig
from vigil.pipeline.options import pipeline_options
cfg = ScoreConfig(inputs=("gs://b/in/*.parquet",), registry="gs://b/models", name="m", output="gs://b/runs")
options = pipeline_options(cfg, ["--runner=PortableRunner", "--job_endpoint=localhost:1"])
encoded = json_format.MessageToJson(JobServiceHandle.encode_pipeline_options(options.get_all_options()))
before = "tensorflow" in sys.modules
sdk_worker_main.create_harness({"PIPELINE_OPTIONS": encoded, "CONTROL_API_SERVICE_DESCRIPTOR": ""},
                               dry_run=True)
import tensorflow as tf
from tensorflow.python.util import _pywrap_util_port
print(json.dumps({"tf_before": before, "env": {k: os.environ.get(k) for k in sys.argv[1:]},
                  "onednn": _pywrap_util_port.IsMklEnabled()}))
"""


def test_a_worker_started_by_beam_applies_vigils_tensorflow_settings_before_tensorflow_loads():
    env = {k: v for k, v in os.environ.items() if k not in SCORING_ENV}
    proc = subprocess.run([sys.executable, "-c", WORKER, *SCORING_ENV], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["env"] == SCORING_ENV and not got["tf_before"]
    assert got["onednn"] is True                   # TensorFlow loaded with oneDNN's kernels
