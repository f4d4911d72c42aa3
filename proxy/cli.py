"""The `sendguard` command line: `serve`, `check-config`, and the admin subcommands.

Every setting gets a flag generated from the `Settings` fields, passed as the raw string to
`load_settings()` so flags, env and the config file share one validation path. A flag left out
stays None, which `load_settings()` reads as "not given" (env, file or default applies).
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from pydantic.fields import FieldInfo

from proxy import __version__
from proxy.cli_admin import ADMIN_COMMANDS
from proxy.settings import CONFIG_ENV, ENV_PREFIX, ConfigError, Settings, load_settings

F = TypeVar("F", bound=Callable[..., Any])

EXIT_CONFIG_ERROR = 2  # the same code click uses for usage errors


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="sendguard")
def cli() -> None:
    """sendguard: an at-most-once guard proxy in front of the Twilio REST API."""


def settings_options(func: F) -> F:
    """Add `--config` and one flag per Settings field, in the model's field order."""
    for name, field in reversed(Settings.model_fields.items()):
        func = _setting_option(name, field)(func)
    config_help = f"TOML config file (keys as in config/sendguard.toml). [env: {CONFIG_ENV}]"
    option = click.option(
        "--config",
        type=click.Path(path_type=Path),  # checked by load_settings(): one line, like the rest
        default=None,
        help=config_help,
    )
    return option(func)


# Secrets have no value flag (a command line shows in `ps` and shell history): their flag takes
# a file to read the secret from (a mounted Kubernetes Secret, say). Env and config file as usual.
SECRET_FILE_SETTINGS = frozenset({"admin_token", "twilio_auth_tokens", "callback_secret"})


def _read_secret_file(ctx: click.Context, param: click.Parameter, value: Path | None) -> str | None:
    if value is None:
        return None
    try:
        return value.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise click.BadParameter(f"cannot read {value}: {reason}") from None


def _setting_option(name: str, field: FieldInfo) -> Callable[[F], F]:
    flag = "--" + name.replace("_", "-")
    if name in SECRET_FILE_SETTINGS:
        return click.option(
            f"{flag}-file",
            name,
            type=click.Path(dir_okay=False, path_type=Path),
            default=None,
            callback=_read_secret_file,
            help=f"File holding the {name.replace('_', ' ')} (never a flag value: it would show"
            f" in `ps`). [env: {ENV_PREFIX}{name.upper()} holds the value itself]",
        )
    # The option's own default stays None ("not given"); the real default is shown in the help.
    shown = _default_text(field)
    help_text = f"{field.description} [env: {ENV_PREFIX}{name.upper()}"
    help_text += f"; default: {shown}]" if shown else "]"
    if field.annotation is bool:  # a switch pair reads better than `--redis-cluster true`
        return click.option(f"{flag}/--no-{flag[2:]}", name, default=None, help=help_text)
    return click.option(flag, name, type=str, default=None, help=help_text)


def _default_text(field: FieldInfo) -> str | None:
    default = field.get_default(call_default_factory=True)
    if isinstance(default, bool) or default is None:
        return None
    if isinstance(default, float) and default.is_integer():
        return str(int(default))  # durations: "600", not "600.0"
    if isinstance(default, str | int | float):
        return str(default)
    if isinstance(default, list) and all(isinstance(item, str) for item in default):
        return ",".join(default)
    return None


def load_or_exit(config: Path | None, flags: dict[str, Any]) -> Settings:
    """Load settings, or print every bad key to stderr and exit 2: one problem is one line,
    several are a header and one indented line each."""
    try:
        return load_settings(config, **flags)
    except ConfigError as exc:
        problems = [f"{_key_name(key)}: {reason}" for key, reason in exc.problems]
        if len(problems) == 1:
            click.echo(f"sendguard: invalid configuration: {problems[0]}", err=True)
        else:
            click.echo("sendguard: invalid configuration:", err=True)
            for problem in problems:
                click.echo(f"  {problem}", err=True)
        raise SystemExit(EXIT_CONFIG_ERROR) from None


def _key_name(key: str) -> str:
    # The config file is no setting of its own: say where it was named.
    return f"config file (--config / {CONFIG_ENV})" if key == "config" else key


@cli.command()
@settings_options
def serve(config: Path | None, **flags: Any) -> None:
    """Run the proxy and the admin server until SIGTERM/SIGINT."""
    settings = load_or_exit(config, flags)
    # Imported only once the configuration is valid: the server pulls in aiohttp, redis, ...
    server = importlib.import_module("proxy.server.run")
    exit_code: int = server.serve(settings)
    raise SystemExit(exit_code)


@cli.command("check-config")
@click.option("--json", "as_json", is_flag=True, help="Print the effective settings as JSON.")
@settings_options
def check_config(config: Path | None, as_json: bool, **flags: Any) -> None:
    """Validate the configuration and print the effective settings (secrets redacted)."""
    settings = load_or_exit(config, flags)
    # Status on stderr, so that `check-config --json | jq` gets pure JSON on stdout.
    click.echo("configuration OK", err=True)
    values = settings.redacted_dict()
    if as_json:
        click.echo(json.dumps(values, indent=2))
        return
    for key, value in values.items():
        click.echo(f"{key} = {'(unset)' if value is None else json.dumps(value)}")


# Admin subcommands (`kill-switch engage|release|list`, suppressions, breakers, records,
# status) talk to the admin API over HTTP; they live in proxy/cli_admin.py.
for _command in ADMIN_COMMANDS:
    cli.add_command(_command)


def main() -> None:
    """Console-script entry point (`sendguard`, `python -m proxy`)."""
    cli(prog_name="sendguard")
