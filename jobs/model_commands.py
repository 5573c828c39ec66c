"""``vigil models``: list, inspect, promote and roll back the versions of a model."""
from __future__ import annotations

import json

import click

from vigil.jobs.errors import Failure, run_guarded
from vigil.schemas.features import column_name


@click.group()
def models():
    """List, inspect, promote and roll back model versions."""


def _registry_options(f):
    f = click.option("--name", required=True, help="Model name.")(f)
    return click.option("--registry", required=True, help="Model registry root (local path or gs://).")(f)


def version_summary(registry: str, name: str, version: str, pointer: dict | None) -> dict:
    """What an operator asks of a version: stage, input, rows, targets, gates."""
    from vigil.models import registry as reg
    from vigil.models.bundle import BundleError, read_manifest
    from vigil.models.calibration import Calibration
    pointer = pointer or {}
    stage = "production" if pointer.get("version") == version else \
        "previous" if version in pointer.get("previous", []) else "candidate"
    try:
        m = read_manifest(reg.version_dir(registry, name, version), f"{name}/{version}")
    except BundleError as exc:
        return {"version": version, "stage": "incomplete", "problem": str(exc)}
    cal = Calibration.from_dict(m["calibration"])
    sizes = m["training"].get("split_sizes", {})
    return {
        "version": version, "stage": stage, "created_at": m["created_at"],
        "kind": m["input"]["kind"], "shape": m["input"]["shape"],
        "feature_columns": m["input"].get("feature_columns", []),
        "training_rows": sum(v for k, v in sizes.items() if k in
                             ("train", "validation", "calibration_a", "calibration_b")),
        "targets": {f"{a:g}": cal.cannot_flag(a) is None for a in cal.target_fprs},
        "smallest_fpr": cal.flag_limit(min(cal.target_fprs))["smallest_fpr"],
        "gates": m.get("gates", {}),
        "thresholds": m["calibration"].get("description", {}).get("thresholds"),
        "report": f"{reg.version_dir(registry, name, version)}/report.html",
    }


def features_text(names: list[str], shown: int = 8) -> str:
    """A model's feature names for a person: a vector column's elements as one entry,
    ``embedding[0..511]``; past ``shown`` entries, how many more."""
    entries: list[str] = []
    i = 0
    while i < len(names):
        column = column_name(names[i])
        run = 0
        while i + run < len(names) and names[i + run] == f"{column}[{run}]":
            run += 1
        entries.append(f"{column}[0..{run - 1}]" if run > 1 else names[i])
        i += max(run, 1)
    more = f" and {len(entries) - shown} more" if len(entries) > shown else ""
    return ", ".join(entries[:shown]) + more


def _gates(summary: dict) -> str:
    gates = summary.get("gates") or {}
    if not gates:
        return "-"
    return "passed" if gates.get("passed") else f"failed ({len(gates.get('failures', []))})"


@models.command("ls")
@click.option("--registry", required=True, help="Model registry root (local path or gs://).")
@click.option("--name", default=None, help="Model name (default: list the registry's models).")
@click.option("--json", "as_json", is_flag=True, help="One JSON document, for scripts.")
@click.pass_context
def models_ls(ctx, registry, name, as_json):
    """List versions: stage, date, input, training rows, targets, gates; without --name,
    the registry's models with their production version.

    \b
    Example:
      vigil models ls --registry ./models
      vigil models ls --registry ./models --name digits
    """
    def go():
        from vigil.models import registry as reg
        if name is None:
            _list_models(registry, as_json)
            return
        pointer = reg.read_pointer(registry, name)
        versions = reg.list_versions(registry, name, complete_only=False)
        if not versions:
            raise Failure(f"model '{name}' has no versions in {registry}")
        rows = [version_summary(registry, name, v, pointer) for v in reversed(versions)]
        if as_json:
            click.echo(json.dumps(rows, indent=1, allow_nan=False))
            return
        header = ("VERSION", "STAGE", "CREATED (UTC)", "INPUT", "ROWS", "TARGET FPR", "GATES")
        table = [header]
        for r in rows:
            if r["stage"] == "incomplete":
                table.append((r["version"], "incomplete", "-", "-", "-", "-", "-"))
                continue
            targets = " ".join(f"{a}" + ("" if ok else " (cannot flag)") for a, ok in r["targets"].items())
            table.append((r["version"], r["stage"], r["created_at"][:16].replace("T", " "),
                          f"{r['kind']} {'x'.join(map(str, r['shape']))}", str(r["training_rows"]),
                          targets, _gates(r)))
        _echo_table(table)
    run_guarded(ctx, go)


def _echo_table(table: list[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


def _list_models(registry: str, as_json: bool) -> None:
    from vigil.models import registry as reg
    names = reg.list_models(registry)
    if not names:
        raise Failure(f"no models in {registry}; 'vigil train --registry {registry} --name NAME' "
                      "publishes one")
    rows = [{"name": n, "production": reg.production_version(registry, n),
             "versions": len(reg.list_versions(registry, n))} for n in names]
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    table = [("NAME", "PRODUCTION", "VERSIONS")] + [
        (r["name"], r["production"] or "-", str(r["versions"])) for r in rows]
    _echo_table(table)


@models.command("show")
@_registry_options
@click.option("--model-version", default=None, help="Default: production.")
@click.option("--json", "as_json", is_flag=True, help="The summary as JSON, for scripts.")
@click.pass_context
def models_show(ctx, registry, name, model_version, as_json):
    """Show one version: stage, input, training, thresholds per target, gates.

    \b
    Example:
      vigil models show --registry ./models --name digits
    """
    def go():
        from vigil.models import registry as reg
        v = reg.resolve(registry, name, model_version)
        s = version_summary(registry, name, v, reg.read_pointer(registry, name))
        if as_json:
            click.echo(json.dumps(s, indent=1, allow_nan=False))
            return
        if s["stage"] == "incomplete":
            raise Failure(s["problem"])
        click.echo(f"{name} version {v} ({s['stage']}), created {s['created_at']}")
        click.echo(f"  input:      {s['kind']}, shape {'x'.join(map(str, s['shape']))}; "
                   f"{s['training_rows']} training rows")
        if s["feature_columns"]:
            click.echo(f"  features:   {features_text(s['feature_columns'])}")
        for alpha, values in (s["thresholds"] or {}).items():
            line = ", ".join(f"{k} {val:.4g}" if val is not None else f"{k} none"
                             for k, val in values.items())
            flag = "" if s["targets"].get(f"{float(alpha):g}", True) else \
                f"  (cannot flag: smallest reachable rate {s['smallest_fpr']:.3g})"
            click.echo(f"  target FPR {float(alpha):g}: {line}{flag}")
        failures = (s["gates"] or {}).get("failures", [])
        click.echo(f"  gates:      {_gates(s)}")
        for failure in failures:
            click.echo(f"    - {failure}")
        click.echo(f"  report:     {s['report']}")
    run_guarded(ctx, go)


@models.command("promote")
@_registry_options
@click.option("--model-version", required=True, help="The version to make production.")
@click.pass_context
def models_promote(ctx, registry, name, model_version):
    """Make a version production.

    \b
    Example:
      vigil models promote --registry ./models --name digits --model-version 3
    """
    def go():
        from vigil.models import registry as reg
        click.echo(f"production is now {reg.promote(registry, name, model_version)['version']}")
    run_guarded(ctx, go)


@models.command("rollback")
@_registry_options
@click.pass_context
def models_rollback(ctx, registry, name):
    """Point production back at the previous version.

    \b
    Example:
      vigil models rollback --registry ./models --name digits
    """
    def go():
        from vigil.models import registry as reg
        click.echo(f"production is now {reg.rollback(registry, name)['version']}")
    run_guarded(ctx, go)
