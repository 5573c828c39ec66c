"""Imported by Beam at the start of every SDK worker, before any DoFn is unpickled.

``vigil score`` names this module in ``--beam_plugins`` (``vigil.pipeline.options``), the
hook Beam's ``sdk_worker_main`` imports "before executing any code": a worker runs no
vigil entry point, and unpickling vigil's DoFns imports TensorFlow, after which its
kernel choice is fixed.  Importing this module is its whole job: it applies
``vigil.models.runtime.SCORING_ENV``.  Nothing in vigil imports it.
"""
from vigil.models.runtime import apply_scoring_env

apply_scoring_env()
