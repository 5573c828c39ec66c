"""Pieces the commands share: ``--config`` files, ``VIGIL_*`` variables checked, and option
help grouped under headings."""
from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import MISSING, fields

import click
import yaml

# Arguments a command does not know pass through to Beam (checked there, not dropped).
BEAM_PASSTHROUGH = {"ignore_unknown_options": True, "allow_extra_args": True}


def _load_config(ctx: click.Context, param, path):
    """Eager --config: a YAML mapping of option names becomes the command's defaults."""
    if not path:
        return path
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise click.BadParameter(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise click.BadParameter(f"{path} must hold a mapping of option names")
    # A key is an option's parameter name or its flag's (target_fprs or target-fpr).
    names = {p.name: p.name for p in ctx.command.params}
    names.update({o.lstrip("-").replace("-", "_"): p.name for p in ctx.command.params for o in p.opts})
    unknown = sorted(k for k in data if k.replace("-", "_") not in names)
    if unknown:
        raise click.BadParameter(f"{path}: unknown option(s) {', '.join(unknown)}")
    ctx.default_map = {**(ctx.default_map or {}),
                       **{names[k.replace("-", "_")]: v for k, v in data.items()}}
    return path


config_option = click.option("--config", type=click.Path(dir_okay=False), is_eager=True,
                             expose_value=False, callback=_load_config,
                             help="YAML file of option values (command line wins).")


def _env_names(command: click.Command, prefix: str) -> set[str]:
    """The variables click reads for a command's options: PREFIX_<OPTION>, and a group's
    subcommands' under PREFIX_<SUBCOMMAND>_."""
    names = {f"{prefix}_{p.name.upper()}" for p in command.params if isinstance(p, click.Option) and p.name}
    for name, sub in getattr(command, "commands", {}).items():
        names |= _env_names(sub, f"{prefix}_{name.upper().replace('-', '_')}")
    return names


def check_environment(ctx: click.Context, environ: Mapping[str, str]) -> None:
    """Refuse a ``VIGIL_<COMMAND>_*`` variable that names no option of the command about to
    run: click would ignore it, and a run would go ahead with the default it meant to change."""
    name = ctx.invoked_subcommand
    command = ctx.command.get_command(ctx, name) if name and isinstance(ctx.command, click.Group) else None
    if command is None or not ctx.auto_envvar_prefix:
        return
    prefix = f"{ctx.auto_envvar_prefix}_{name.upper().replace('-', '_')}"
    known = _env_names(command, prefix)
    for var in sorted(v for v in environ if v.startswith(prefix + "_") and v not in known):
        close = difflib.get_close_matches(var, sorted(known), 1)
        raise click.UsageError(f"environment variable {var} names no option of 'vigil {name}'"
                               + (f"; did you mean {close[0]}?" if close else ""))


class SectionedCommand(click.Command):
    """A command whose --help lists its options under headings (``sections``: title ->
    parameter names); the rest go under "Other options"."""

    def __init__(self, *args, sections: dict[str, tuple[str, ...]] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.sections = sections or {}

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """Write the options' help under the command's headings."""
        params = self.get_params(ctx)
        placed = {name for names in self.sections.values() for name in names}
        groups = [(title, [p for p in params if p.name in names])
                  for title, names in self.sections.items()]
        groups.append(("Other options", [p for p in params if p.name not in placed]))
        for title, members in groups:
            rows = [r for r in (p.get_help_record(ctx) for p in members) if r]
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)


def options_from(*config_classes):
    """Click options for every declared field of config dataclasses, from the field's
    declaration (``vigil.models.config.option``): flag, type, default, range, choices, help."""
    def decorate(command):
        for f in reversed([f for cls in config_classes for f in fields(cls) if f.metadata]):
            command = _option(f)(command)
        return command
    return decorate


def _option(f) -> callable:
    meta = f.metadata
    flag = meta["flag"] or "--" + f.name.replace("_", "-")
    default = None if f.default is MISSING else f.default
    kwargs = {"help": meta["help"], "required": meta["required"]}
    item = f.type.split("[", 1)[1] if f.type.startswith("tuple[") else f.type
    bounds = {"min": meta["low"], "max": meta["high"], "min_open": meta["open_low"],
              "max_open": meta["open_high"]}
    if meta["parse"]:
        kwargs.update(default=None, callback=_parsed(meta["parse"], default))
        default = None
    elif f.type == "bool":
        kwargs["default"] = bool(default)
        if "/" not in flag:
            kwargs["is_flag"] = True
    else:
        if f.type.startswith("tuple"):
            kwargs.update(multiple=True)
        kwargs["default"] = default if default is not None or not f.type.startswith("tuple") else ()
        if meta["choices"]:
            kwargs["type"] = click.Choice(list(meta["choices"]))
        elif item.startswith("int"):
            kwargs["type"] = click.IntRange(meta["low"], meta["high"]) if meta["low"] is not None else int
        elif item.startswith("float"):
            kwargs["type"] = click.FloatRange(**bounds) if meta["low"] is not None else float
    kwargs["show_default"] = not (default is None or default is False or default == ()) \
        and not meta["required"]
    return click.option(flag, f.name, **kwargs)


def _parsed(parse, default):
    """A click callback that turns an option's text into its field's value (its default
    when the option is not given)."""
    def callback(ctx, param, value):
        if value is None:
            return default
        try:
            return parse(value)
        except ValueError as exc:
            raise click.BadParameter(f"{value!r}: {parse.__doc__.splitlines()[0]}") from exc
    return callback
