"""The subcommands of ``vigil``: train, score, models, demo."""
from __future__ import annotations

import click

from vigil.jobs.command_kit import BEAM_PASSTHROUGH, SectionedCommand, config_option, options_from
from vigil.jobs.demo import TARGET_FPR as DEMO_TARGET_FPR
from vigil.jobs.errors import EXIT_DQ_FAILED, EXIT_GATE_FAILED, Failure, Terminated, run_guarded
from vigil.jobs.train_config import TRAIN_CONFIG_KEYS, TrainJobConfig
from vigil.models.config import TrainConfig
from vigil.pipeline.config import ScoreConfig

TRAIN_SECTIONS = {
    "Input": ("inputs", "format", "id_column", "feature_columns", "label_column", "normal_values",
              "image_size", "channels", "max_records"),
    "Model": ("latent_dim", "likelihood", "members"),
    "Training": ("epochs", "max_examples", "batch_size", "seed", "device", "mixed_precision"),
    "Calibration and gates": ("target_fprs", "calibration_inputs", "promote", "allow_unflaggable"),
    "Registry": ("registry", "name"),
}


@click.command(cls=SectionedCommand, sections=TRAIN_SECTIONS)
@config_option
@options_from(TrainJobConfig, TrainConfig)
@click.pass_context
def train(ctx, **options):
    """Train the VAE and the DAE on normal data and publish a model version.

    The version is promoted to production when its gates pass (finite losses, held-out
    false-positive rate within tolerance, not worse than the current production).

    Thresholds set on training data that holds anomalies are too high (table models
    train past them by trimming the highest-loss rows; a quantile cannot).  Give
    --calibration-input a set of records checked to be normal (a few hundred: 267 at
    target FPR 0.01) and the thresholds and gates come from it.

    \b
    Example:
      vigil train --input 'data/train-*.tfrecord' --registry ./models --name digits \\
                  --label-column label --normal-values 0,1,2,3,4,5,6,8,9
    """
    if options["label_column"] and not options["normal_values"]:
        raise click.UsageError("--label-column needs --normal-values")
    training = {k: options.pop(k) for k in TRAIN_CONFIG_KEYS}
    run_guarded(ctx, lambda: _train_and_report(TrainJobConfig(
        **options, train=TrainConfig(**training, verbose=2))))


def _train_and_report(cfg) -> None:
    """Train, publish, and say what happened; a failed gate is its own exit code."""
    from vigil.jobs.train import run_training
    from vigil.models.registry import version_dir
    out = run_training(cfg)
    click.echo(f"published {cfg.name} version {out.version}"
               + (" and promoted it to production" if out.promoted else ""))
    sizes = out.result.split_sizes
    parts = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in sizes.items())
    click.echo(f"  splits:     {parts}")
    for alpha, advice in out.cannot_flag.items():
        click.echo(f"  target FPR {alpha:g}: " + (f"cannot flag: {advice}" if advice else
                                                  "can flag"))
    click.echo(f"  gates:      {'failed' if out.gate_failures else 'passed'}")
    click.echo(f"  report:     {version_dir(cfg.registry, cfg.name, out.version)}/report.html")
    if out.gate_failures:
        raise Failure(f"version {out.version} stays a candidate: "
                       + "; ".join(out.gate_failures), EXIT_GATE_FAILED)


@click.command(context_settings=BEAM_PASSTHROUGH)
@config_option
@options_from(ScoreConfig)
@click.option("--no-report", is_flag=True, help="Skip the data-quality report.")
@click.option("--fail-on-dq", is_flag=True, help="Exit 4 when a critical data-quality check fails.")
@click.pass_context
def score(ctx, no_report, fail_on_dq, **options):
    """Score files with a model version on Apache Beam and publish a run.

    Any option vigil does not know goes to Beam (--runner DataflowRunner --project ...
    --region ... --temp_location gs://... --setup_file ./setup.py). Without --runner,
    the local Python runner is used and nothing touches the network.

    \b
    Example:
      vigil score --input 'data/new/*.tfrecord' --registry ./models --name digits \\
                  --output ./runs --run-id 2026-11-24
    """
    _check_beam_args(ctx.args, [o for p in ctx.command.params for o in p.opts], "vigil score")

    run_guarded(ctx, lambda: _score_and_report(ScoreConfig(**options), ctx.args, not no_report, fail_on_dq))


def _report(run_dir: str, fail_on_dq: bool, max_anomaly_multiple: float = 3.0, bundle=None) -> None:
    from vigil.pipeline.report.run_report import build_run_report
    result = build_run_report(run_dir, max_anomaly_multiple, bundle=bundle)
    failed = [c for c in result.checks if not c.success]
    click.echo(f"report {run_dir}/report/index.html: {len(result.checks) - len(failed)} of "
               f"{len(result.checks)} checks passed")
    for c in failed:
        click.echo(f"  {'CRITICAL' if c.critical else 'warning'}: {c.frame} {c.expectation}"
                   f"{' ' + c.column if c.column else ''} ({c.why}; {c.observed})")
    if fail_on_dq and result.critical_failures:
        raise Failure(f"{len(result.critical_failures)} critical data-quality check(s) failed",
                       EXIT_DQ_FAILED)


def _check_beam_args(beam_args: list[str], vigil_options: list[str], where: str) -> None:
    """Arguments that neither vigil nor any Beam option class knows are usage errors."""
    import difflib

    from vigil.pipeline.options import unknown_beam_args
    unknown, beam_known = unknown_beam_args(beam_args)
    if not unknown:
        return
    first = unknown[0].split("=", 1)[0]
    close = difflib.get_close_matches(first, vigil_options + beam_known, n=1)
    hint = f"; did you mean {close[0]}?" if close else \
        "; vigil's options are in 'vigil score --help', Beam's in its PipelineOptions"
    raise click.UsageError(f"{where}: unknown option {unknown[0]!r}{hint}")


def _score_and_report(cfg, beam_args, report: bool = True, fail_on_dq: bool = False) -> None:
    from vigil.pipeline.commit import reasons_text
    from vigil.pipeline.options import pipeline_options
    from vigil.pipeline.run import plan_run
    from vigil.pipeline.run import score as run_score
    options = pipeline_options(cfg, beam_args)     # a bad runner or path stops here
    plan = plan_run(cfg)
    result = run_score(plan, options)
    if result.dry_run:
        d = result.dry_run
        click.echo(f"dry run: the job translated for {d['runner'].rsplit('.', 1)[-1]} "
                   f"({len(d['steps'])} steps: {', '.join(d['steps'])}); nothing ran, nothing was "
                   f"written or published")
        for name, path in d["packages"].items():
            click.echo(f"  workers install {name}: {path}")
        return
    c = result.manifest["counts"]
    target = plan.config.target_fpr
    reasons = f" ({reasons_text(c['dead_letter_reasons'])})" if c["dead_lettered"] else ""
    click.echo(f"run {result.run_dir}: read {c['read']}, scored {c['scored']}, "
               f"dead-lettered {c['dead_lettered']}{reasons}, anomalies {c['anomalies']} "
               f"(model {cfg.name}/{plan.version}, target FPR {target:g})")
    why = plan.bundle.calibration.cannot_flag(target)
    if why:
        click.echo(f"  warning: nothing can be flagged: {why}")
    for item in result.manifest["skipped"]:
        click.echo(f"  skipped {item['uri']}: {item['skipped']}, not read")
    if report:
        from vigil.pipeline.commit import storage_failure
        try:
            _report(result.run_dir, fail_on_dq, bundle=plan.bundle)
        except Terminated as exc:
            exc.args = (f"{exc}; run {result.run_dir} is published, its report is not: "
                        f"'vigil report {result.run_dir}' builds it",)
            raise
        except Exception as exc:  # noqa: BLE001 - a storage error here must not read as "nothing published"
            failure = storage_failure(exc, where=f"{result.run_dir}/report")
            if failure is None:
                raise
            raise Failure(f"run {result.run_dir} is published, but its report could not be "
                           f"written: {failure}; 'vigil report {result.run_dir}' retries it") from exc


@click.command("run")
@click.argument("spec", type=click.Path(exists=True, dir_okay=False))
@click.option("--date", default=None, help="Run date YYYY-MM-DD (default: today, UTC).")
@click.pass_context
def run_spec(ctx, spec, date):
    """Run a scheduled job from a YAML spec, for one date.

    A scoring job writes OUTPUT/DATE and replaces that date's run if it exists, so a
    re-run for the same date gives the same result. See jobs/specs/ for examples.

    \b
    Example:
      vigil run jobs/specs/nightly-score.yaml --date 2026-11-24
    """
    def go():
        import datetime as dt

        from vigil.jobs.specs import load_spec
        day = date or dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
        job = load_spec(spec, day)
        o = dict(job.options)
        if job.kind == "score":
            _check_beam_args(list(job.beam_args), [], f"{spec}: beam_args")
            cfg = ScoreConfig(inputs=job.inputs, registry=job.registry, name=job.name, output=job.output,
                              run_id=day, overwrite=True, **o)
            _score_and_report(cfg, list(job.beam_args))
            return
        from vigil.jobs.train_config import TRAIN_CONFIG_KEYS, TrainJobConfig
        from vigil.models.config import TrainConfig
        tc = TrainConfig(verbose=2, **{k: (tuple(v) if isinstance(v, list) else v)
                                       for k, v in o.items() if k in TRAIN_CONFIG_KEYS})
        rest = {k: (tuple(str(x) for x in v) if isinstance(v, list) else v)
                for k, v in o.items() if k not in TRAIN_CONFIG_KEYS}
        _train_and_report(TrainJobConfig(job.inputs, job.registry, job.name, train=tc, **rest))
    run_guarded(ctx, go)


@click.command()
@click.argument("run_dir")
@click.option("--label-column", required=True, help="Column holding the true labels.")
@click.option("--normal-values", default=None,
              help="Comma-separated label values that are normal (default: anomaly = 1/true).")
@click.pass_context
def evaluate(ctx, run_dir, label_column, normal_values):
    """AUROC, AUPRC and precision/recall/F1 of a labelled run; writes evaluation.json.

    \b
    Example:
      vigil evaluate ./runs/2026-11-24 --label-column label --normal-values 0
    """
    def go():
        from vigil.jobs.evaluate import evaluate as run_eval
        from vigil.jobs.evaluate import format_table, save
        values = tuple(v.strip() for v in normal_values.split(",")) if normal_values else ()
        result = run_eval(run_dir, label_column, values)
        click.echo(format_table(result))      # shown even where the run folder is read-only
        save(result)
    run_guarded(ctx, go)


@click.command()
@click.argument("run_dir")
@click.option("--fail-on-dq", is_flag=True, help="Exit 4 when a critical check fails.")
@click.option("--max-anomaly-multiple", type=click.FloatRange(1), default=3.0, show_default=True,
              help="Anomaly rate allowed, as a multiple of the target FPR.")
@click.pass_context
def report(ctx, run_dir, fail_on_dq, max_anomaly_multiple):
    """Build RUN_DIR/report/: great-expectations checks, Data Docs, plots, index.html.

    \b
    Example:
      vigil report ./runs/2026-11-24 --fail-on-dq
    """
    run_guarded(ctx, lambda: _report(run_dir, fail_on_dq, max_anomaly_multiple))


@click.command()
@click.option("--output", default="./vigil-demo", show_default=True, help="Everything goes here.")
@click.option("--kind", type=click.Choice(["images", "features"]), default="images", show_default=True,
              help="images: scikit-learn's digits as PNG TFRecords; features: its breast-cancer table.")
@click.option("--epochs", type=click.IntRange(1), default=40, show_default=True,
              help="Most training epochs.")
@click.option("--target-fpr", type=click.FloatRange(0, 0.5, min_open=True, max_open=True),
              default=DEMO_TARGET_FPR, show_default=True,
              help="False-positive rate is_anomaly is set at (the demo's calibration split "
                   "is too small for 0.01 to flag much).")
@click.pass_context
def demo(ctx, output, kind, epochs, target_fpr):
    """Train and score on data that ships with scikit-learn, and summarise the result.

    images: the 8x8 handwritten digits, written as PNG TFRecord shards, one digit held out
    of training as the anomaly. features: the breast-cancer table as Parquet, malignant
    rows as the anomalies.

    \b
    Example:
      vigil demo --output ./vigil-demo
    """
    def go():
        from vigil.jobs.demo import run_demo
        for line in run_demo(output, kind, epochs, target_fpr=target_fpr):
            click.echo(line)
    run_guarded(ctx, go)
