"""Importing vigil changes no process-wide setting: PIL, matplotlib, TensorFlow, logging, warnings.

A notebook that imports ``vigil.models`` keeps its own settings.  The libraries vigil
builds on are imported first, so that what is compared is what vigil's own modules do.
No layer makes any.  The one module whose import is its job, ``vigil.pipeline.worker_boot``
(Beam imports it as a worker starts; nothing in vigil does), is probed on its own and
sets exactly ``vigil.models.runtime.SCORING_ENV``.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PROBE = r"""
import json, logging, os, pkgutil, sys, warnings, importlib
import tensorflow as tf, tf_keras, apache_beam, great_expectations, pyarrow, pandas, sklearn, click, yaml
import matplotlib, matplotlib.figure, PIL.Image, dask.distributed
import apache_beam.runners.dask.dask_runner, apache_beam.ml.inference.base

def state():
    loggers = {name: (lg.level, len(lg.handlers), len(lg.filters), lg.propagate, lg.disabled)
               for name, lg in logging.root.manager.loggerDict.items() if isinstance(lg, logging.Logger)}
    return {"env": dict(os.environ), "pil": PIL.Image.MAX_IMAGE_PIXELS,
            "backend": matplotlib.rcParams["backend"],
            "root": (logging.root.level, len(logging.root.handlers)),
            "tf_filters": len(tf.get_logger().filters), "warnings": len(warnings.filters), "loggers": loggers}

def changes(before, after):
    out = {k: [before[k], after[k]] for k in ("pil", "backend", "root", "tf_filters", "warnings")
           if before[k] != after[k]}
    env = {k: after["env"].get(k) for k in set(before["env"]) | set(after["env"])
           if before["env"].get(k) != after["env"].get(k)}
    if env:
        out["env"] = env
    loggers = {n: v for n, v in after["loggers"].items()
               if before["loggers"].get(n, (0, 0, 0, True, False)) != v}
    if loggers:
        out["loggers"] = loggers
    return out

result = {}
for layer in sys.argv[1:]:
    before = state()
    package = importlib.import_module(layer)
    names = [layer] + [m.name for m in pkgutil.walk_packages(getattr(package, "__path__", []), layer + ".")
                       if not m.name.endswith(".worker_boot")]
    for name in names:
        importlib.import_module(name)
    result[layer] = {"modules": len(names), "changes": changes(before, state())}
print(json.dumps(result))
"""


def _probe(*layers: str) -> dict:
    res = subprocess.run([sys.executable, "-c", PROBE, *layers], capture_output=True, text=True,
                         timeout=600, cwd=Path(__file__).resolve().parents[2],
                         env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"})
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_importing_vigil_changes_no_process_wide_setting():
    got = _probe("vigil.schemas", "vigil.models", "vigil.pipeline", "vigil.jobs")
    assert got["vigil.schemas"]["changes"] == {}
    assert got["vigil.models"]["modules"] > 10 and got["vigil.models"]["changes"] == {}
    assert got["vigil.pipeline"]["modules"] > 10 and got["vigil.pipeline"]["changes"] == {}
    assert got["vigil.jobs"]["changes"] == {}


def test_the_worker_boot_sets_the_scoring_environment_only():
    from vigil.models.runtime import SCORING_ENV
    got = _probe("vigil.pipeline.worker_boot")
    assert got["vigil.pipeline.worker_boot"]["changes"] == {"env": SCORING_ENV}
