"""Plan, build and run one scoring job; publish it only if its books balance.

``plan_run`` does everything that can fail on bad options, a bad model or bad inputs
*before* anything is written; ``build_pipeline`` wires the Beam graph; ``score`` runs it
and publishes through ``vigil.pipeline.commit``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import json
import logging
import math
import threading
import time
from dataclasses import dataclass, field

import apache_beam as beam
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import RunInference
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions, TestOptions

from vigil.models import registry
from vigil.models.bundle import Bundle
from vigil.models.calibration import default_target_fpr
from vigil.models.scoring import scoring_block
from vigil.pipeline import commit
from vigil.pipeline.config import BATCH_SIZE, ScoreConfig
from vigil.pipeline.decode import DecodeSpec
from vigil.pipeline.handler import BlockModelHandler
from vigil.pipeline.options import runs_on_this_host
from vigil.pipeline.preflight import (
    InputError,
    InputFile,
    carried_fields,
    check_columns,
    check_folder,
    match_inputs,
    resolve_formats,
)
from vigil.pipeline.readers import ReadSpec, printable, records_held
from vigil.pipeline.transforms import (
    DEAD_LETTER,
    STATS,
    Decode,
    ReadFiles,
    ToTable,
    failed_batch_to_dead_letters,
    path_token,
)
from vigil.schemas.tables import DEAD_LETTER_SCHEMA, scores_schema

LOG = logging.getLogger("vigil.pipeline")
# Rows per row group of the scores files, at most (a bundle's last group may be smaller).
ROW_GROUP_ROWS = 65_536


@dataclass(frozen=True, kw_only=True)
class RunPlan:
    """What ``plan_run`` resolved and checked before anything is written; ``build_pipeline`` wires it.

    ``staging`` is the folder the run writes into (a fresh name; it is created only when
    the run starts, under the run's lock) and publishes by one rename.
    """
    config: ScoreConfig
    run_id: str
    version: str
    bundle: Bundle
    files: list[InputFile]
    read_spec: ReadSpec
    decode_spec: DecodeSpec
    label_fields: list[pa.Field]
    staging: str
    skipped: list[dict] = field(default_factory=list)   # matched paths that are not read, and why

    @property
    def thresholds(self) -> dict:
        """The threshold of ``anomaly_score`` and of each score at the run's target FPR (null where out of
        reach)."""
        cal = self.bundle.calibration
        alpha = self.config.target_fpr
        values = {"anomaly_score": cal.threshold(alpha), **cal.score_thresholds(alpha)}
        # null, not Infinity, where a rate is out of reach: the manifest stays strict JSON
        return {"target_fpr": alpha, **{k: (v if math.isfinite(v) else None) for k, v in values.items()}}


def default_run_id() -> str:
    """A run id from the UTC time, ``YYYYMMDDTHHMMSSZ``."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def plan_run(config: ScoreConfig) -> RunPlan:
    """Resolve and verify the model, match and check the inputs; write nothing."""
    run_id = config.run_id or default_run_id()
    if "/" in run_id or run_id.startswith("."):
        raise InputError(f"--run-id {run_id!r}: must not contain '/' or start with '.'")
    check_folder(config.output, "--output")
    final = commit.run_dir(config.output, run_id)
    if commit.is_published(final) and not config.overwrite:
        raise InputError(f"run {final} already exists; pass --overwrite to replace it")
    version = registry.resolve(config.registry, config.name, config.model_version)
    bundle = registry.load(config.registry, config.name, version)   # verifies everything
    bundle.require_scorable()
    kind = bundle.config.kind
    config = dataclasses.replace(config, target_fpr=_target_fpr(config, bundle, version),
                                 batch_size=config.batch_size or BATCH_SIZE[kind])
    matched = match_inputs(config.inputs, config.max_files)
    features = list(bundle.preprocessing.feature_columns)
    try:
        files = resolve_formats(matched.files, config.format, kind)
        check_columns(files, config.id_column, features)
    except InputError as exc:
        raise InputError(f"{exc} (model {config.name}/{version} takes {kind} input "
                         f"{tuple(bundle.config.input_shape)})") from exc
    read_spec = ReadSpec("parquet" if kind == "features" else "image", config.id_column,
                         tuple(features), config.carry_columns,
                         max_record_bytes=config.max_record_bytes, batch_rows=config.batch_size)
    decode_spec = DecodeSpec(kind, tuple(bundle.config.input_shape), config.max_pixels,
                             config.max_record_bytes, tuple(features),
                             jpeg_dct_scaling=bundle.preprocessing.jpeg_dct_scaling)
    return RunPlan(config=config, run_id=run_id, version=version, bundle=bundle, files=files,
                   read_spec=read_spec, decode_spec=decode_spec,
                   label_fields=carried_fields(files, config.carry_columns),
                   staging=commit.staging_dir(config.output, run_id),
                   skipped=matched.skipped)


def _target_fpr(config: ScoreConfig, bundle: Bundle, version: str) -> float:
    """The rate to flag at: the one asked for, else the model's calibrated one.

    A model calibrated for several rates scores at the smallest it can flag at.  A rate
    asked for that the model's calibration cannot reach is refused: every record would
    score below its threshold.
    """
    cal = bundle.calibration
    if config.target_fpr is None:
        return default_target_fpr(cal)
    why = cal.cannot_flag(config.target_fpr)
    if why:
        raise InputError(f"--target-fpr {config.target_fpr:g}: model {config.name}/{version} {why}; "
                         f"score at that rate or above (trained for "
                         f"{', '.join(f'{a:g}' for a in cal.target_fprs)})")
    return config.target_fpr


def build_pipeline(p: beam.Pipeline, plan: RunPlan) -> None:
    """Wire read -> decode -> RunInference -> Arrow tables -> Parquet, with every dead letter kept.

    Records travel in blocks (``RecordBlock``): a table's rows as read, a file's images
    after decoding; ``RunInference`` batches them by rows and each scored batch becomes
    one Arrow table, so per-record Python is spent only where a format needs it.
    """
    cfg = plan.config
    handler = BlockModelHandler(plan.bundle.path, plan.bundle.label, cfg.target_fpr,
                                min_batch_size=scoring_block(plan.bundle.config),
                                max_batch_size=cfg.batch_size,
                                model_copies=cfg.model_copies or None, precision=cfg.precision)
    schema = scores_schema(plan.label_fields, {"vigil.thresholds": json.dumps(plan.thresholds),
                                               "vigil.model_version": plan.version,
                                               "vigil.run_id": plan.run_id})
    read = (p
            | "Files" >> beam.Create([(path_token(f.uri), f.format, path_token(f.root))
                                      for f in plan.files])
            | "SpreadFiles" >> beam.Reshuffle()
            | "Read" >> beam.ParDo(ReadFiles(plan.read_spec, len(plan.files),
                                             started_dir=f"{plan.staging}/{commit.WORKERS_DIR}"))
            .with_outputs(DEAD_LETTER, STATS, main="records"))
    decoded = read.records | "Decode" >> beam.ParDo(Decode(plan.decode_spec)).with_outputs(
        DEAD_LETTER, main="ok")
    scored, failed = decoded.ok | "Score" >> RunInference(handler).with_exception_handling()
    tables = scored | "ToTable" >> beam.ParDo(ToTable(plan.run_id, schema,
                                                      plan.bundle.preprocessing.feature_columns,
                                                      tuple(plan.bundle.config.input_shape),
                                                      records_held(plan.files))
                                              ).with_outputs(DEAD_LETTER, main="tables")
    failed_rows = failed.failed_inferences | "FailedBatches" >> beam.FlatMap(failed_batch_to_dead_letters)
    dead = ((read[DEAD_LETTER], decoded[DEAD_LETTER], tables[DEAD_LETTER], failed_rows)
            | "AllDeadLetters" >> beam.Flatten()
            | "DeadLetterRows" >> beam.Map(lambda d: d.to_row()))
    (tables.tables
     # Each table the sink takes becomes a row group: gather scored batches into larger ones.
     | "RowGroups" >> beam.BatchElements(min_batch_size=ROW_GROUP_ROWS, max_batch_size=ROW_GROUP_ROWS,
                                         element_size_fn=lambda t: t.num_rows)
     | "JoinTables" >> beam.Map(pa.concat_tables)
     | "WriteScores" >> beam.io.WriteToParquetBatched(
         f"{plan.staging}/scores/part", schema, codec="snappy", file_name_suffix=".parquet",
         num_shards=cfg.num_shards))
    dead | "WriteDeadLetters" >> beam.io.WriteToParquet(
        f"{plan.staging}/dead_letter/part", DEAD_LETTER_SCHEMA, codec="snappy",
        file_name_suffix=".parquet", num_shards=cfg.num_shards)
    (read[STATS] | "StatsJson" >> beam.Map(json.dumps)
     | "WriteStats" >> beam.io.WriteToText(f"{plan.staging}/{commit.STATS_DIR}/files",
                                          file_name_suffix=".jsonl"))


@dataclass
class RunResult:
    """A published run's folder and manifest, or what a dry run translated."""
    run_dir: str
    manifest: dict = field(default_factory=dict)
    dry_run: dict | None = None      # what a dry run translated: runner, steps, packages


class WorkersNotStarted(Exception):
    """The job was submitted, but none of its workers started within the time allowed."""


def score(plan: RunPlan, options: PipelineOptions) -> RunResult:
    """Run the pipeline for a plan and publish the run; raises RunError if it must not be.

    A storage failure anywhere (the lock, a sink on a worker, the commit) ends in one
    RunError naming the path; an earlier published run of the id stays as it was.  With
    Beam's ``--dry_run`` (Dataflow) the job is translated only: nothing runs, nothing is
    written or published, and the result says what was translated.
    """
    cfg = plan.config
    final = commit.run_dir(cfg.output, plan.run_id)
    if options.view_as(TestOptions).dry_run:
        return _dry_run(plan, options)
    started = False          # whether the staging folder may exist (to remove on failure)
    try:
        with commit.run_lock(cfg.output, plan.run_id):
            commit.clean_stale(cfg.output, plan.run_id)
            started = True
            manifest = _run_and_check(plan, options)
            commit.publish(plan.staging, final, manifest)
    except commit.RunError as exc:
        raise type(exc)(f"{exc}; {_published_state(final)}") from exc
    except WorkersNotStarted as exc:
        raise commit.RunError(f"run {plan.run_id}: {exc}; {_published_state(final)}; "
                              f"{commit.discard(plan.staging)}") from exc
    except Exception as exc:
        # Whatever failed (a worker's step, a sink, the commit), the line says what is
        # published now; --verbose shows the cause's traceback.
        failure = commit.storage_failure(exc, where=plan.staging if started else cfg.output)
        what = f"cannot write run {plan.run_id}: {failure}" if failure else \
            f"run {plan.run_id} failed: {type(exc).__name__}: {_first_line(exc)}"
        left = f"; {commit.discard(plan.staging)}" if started else ""
        raise commit.RunError(f"{what}; {_published_state(final)}{left}") from exc
    except BaseException as exc:
        # Ctrl-C, or SIGTERM (vigil.jobs.cli raises it where the process stands): remove what
        # this run wrote, then stop as asked, saying what is published.
        left = f"; {commit.discard(plan.staging)}" if started else ""
        if exc.args:
            exc.args = (f"{exc}; {_published_state(final)}{left}",)
        raise
    return RunResult(final, manifest)


def _published_state(final: str) -> str:
    """What a failed run leaves published: the clause its error line ends with."""
    return "the earlier run of this id is untouched" if commit.is_published(final) \
        else "nothing was published"


# What a runner's error text means when the text alone does not say it.
KNOWN_CAUSES = (
    ("Channel closed prematurely", "a worker process died or lost its connection to the job"),
    ("DEADLINE_EXCEEDED", "the runner's workers did not answer in time"),
)


def _first_line(exc: BaseException) -> str:
    """The line of an error that says what happened, with the cause a runner buried.

    Beam puts a worker's traceback first; a portable job's error is "Error running
    pipeline." with the worker's traceback after it, whose last line is the cause.
    """
    text = str(exc)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return ""
    head = lines[-1] if lines[0].startswith("Traceback") else lines[0]
    if head != lines[-1] and any(line.startswith("Traceback") for line in lines):
        head = f"{head} ({lines[-1]})"
    hint = next((why for pattern, why in KNOWN_CAUSES if pattern in text), None)
    return head[:300] + (f": {hint}" if hint else "")


def _run_and_check(plan: RunPlan, options: PipelineOptions) -> dict:
    """Run the pipeline into the staging folder, check its books, return the manifest."""
    cfg = plan.config
    started = time.time()
    p = beam.Pipeline(options=options)
    build_pipeline(p, plan)
    if runs_on_this_host(options):
        p.run().wait_until_finish()
    else:
        _run_watched(p, f"{plan.staging}/{commit.WORKERS_DIR}", cfg.worker_start_timeout)
    elapsed = time.time() - started
    try:
        counts, stats = commit.tally(plan.staging)
        commit.check_books(counts, stats, cfg.max_bad_fraction, len(plan.files), cfg.allow_uncounted_files)
    except commit.RunError as exc:
        # The staging folder stays for inspection (it never looks published); the next
        # run of this id removes it.
        raise type(exc)(f"{exc}; its staging folder is kept for inspection at {plan.staging}") from exc
    info = {printable(f.uri): {"bytes": f.size, "format": f.format, "root": printable(f.root)}
            for f in plan.files}
    return {
        "format": 1, "run_id": plan.run_id,
        "model": {"registry": cfg.registry, "name": cfg.name, "version": plan.version,
                  "label": plan.bundle.label},
        "inputs": [dict(s, **info.get(s["uri"], {})) for s in sorted(stats, key=lambda s: s["uri"])],
        "skipped": plan.skipped,
        "counts": dict(counts, skipped_paths=len(plan.skipped)),
        "thresholds": plan.thresholds,
        "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(cfg).items()},
        "timings": {"pipeline_seconds": round(elapsed, 3),
                    "records_per_second": round(counts["read"] / elapsed, 1) if elapsed else None,
                    "started_at": _dt.datetime.fromtimestamp(started, _dt.timezone.utc).isoformat()},
        "calibration": plan.bundle.calibration.describe(),
    }


def _run_watched(p: beam.Pipeline, started_dir: str, timeout: float) -> None:
    """Run a job on workers elsewhere; cancel it if none has started after ``timeout`` s, or
    if the launcher is stopped (Ctrl-C, SIGTERM).

    Workers that cannot start (vigil or a dependency missing from their environment, a
    pool that is not there) leave most runners waiting for them, for minutes, before a
    transport error.  Each worker leaves a file in ``started_dir`` when vigil's first
    step is set up, so the launcher knows that at least one could start.
    """
    box: dict = {}

    def run():
        try:
            box["result"] = p.run()
            box["result"].wait_until_finish()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the launching thread
            box["error"] = exc

    thread = threading.Thread(target=run, name="vigil-job", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    try:
        while thread.is_alive() and not _any_worker_started(started_dir):
            if time.monotonic() > deadline:
                raise WorkersNotStarted(
                    f"no worker of the job started within {timeout:g} s (--worker-start-timeout); "
                    f"the job was cancelled. Its workers could not start or reach the job: check "
                    f"that their environment has vigil and its dependencies (--setup_file "
                    f"setup.py, or a container image) and that the runner can start workers")
            thread.join(1.0)
        thread.join()
    except BaseException:
        # Whatever stops the launcher (no worker started in time, Ctrl-C, SIGTERM): a job left
        # running would write on into a staging folder that is about to be removed.
        if "result" in box:
            with contextlib.suppress(Exception):
                box["result"].cancel()
        raise
    if "error" in box:
        raise box["error"]


def _any_worker_started(started_dir: str) -> bool:
    try:
        return bool(FileSystems.match([f"{started_dir}/*"])[0].metadata_list)
    except Exception:  # noqa: BLE001 - not there yet
        return False


def _dry_run(plan: RunPlan, options: PipelineOptions) -> RunResult:
    """Translate the job for its runner without running it (Beam's ``--dry_run``).

    The plan's staging folder is never created: nothing runs that would write it.
    """
    p = beam.Pipeline(options=options)
    build_pipeline(p, plan)
    p.run()
    proto = getattr(p.runner, "proto_pipeline", None) or p.to_runner_api()
    transforms = proto.components.transforms
    steps = [transforms[s].unique_name for root in proto.root_transform_ids
             for s in transforms[root].subtransforms]
    packages = dict(_staged_file(a) for env in proto.components.environments.values()
                    for a in env.dependencies)
    return RunResult("", {}, dry_run={"runner": options.view_as(StandardOptions).runner,
                                      "steps": steps, "packages": packages})


def _staged_file(artifact) -> tuple[str, str]:
    """(name the workers install it under, the local file staged) of a job's dependency."""
    from apache_beam.portability.api import beam_runner_api_pb2 as api
    name = api.ArtifactStagingToRolePayload.FromString(artifact.role_payload).staged_name
    return name, api.ArtifactFilePayload.FromString(artifact.type_payload).path
