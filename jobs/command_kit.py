"""Pieces the commands share: ``--config`` files and option help grouped under headings."""
from __future__ import annotations

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
    known = {p.name for p in ctx.command.params}
    unknown = sorted(set(k.replace("-", "_") for k in data) - known)
    if unknown:
        raise click.BadParameter(f"{path}: unknown option(s) {', '.join(unknown)}")
    ctx.default_map = {**(ctx.default_map or {}), **{k.replace("-", "_"): v for k, v in data.items()}}
    return path


config_option = click.option("--config", type=click.Path(dir_okay=False), is_eager=True,
                             expose_value=False, callback=_load_config,
                             help="YAML file of option values (command line wins).")


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
