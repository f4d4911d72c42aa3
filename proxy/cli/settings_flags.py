"""One flag per setting, generated from the `Settings` fields, and the config-error exit.

Each flag is passed as the raw string to `load_settings()` so flags, env and the config file
share one validation path. A flag left out stays None, which `load_settings()` reads as "not
given" (env, file or default applies).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from pydantic.fields import FieldInfo

from proxy.settings import CONFIG_ENV, ENV_PREFIX, ConfigError, Settings, load_settings
from proxy.settings_fields import ParsedText

F = TypeVar("F", bound=Callable[..., Any])

EXIT_CONFIG_ERROR = 2  # the same code click uses for usage errors


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
    if isinstance(default, ParsedText):
        return str(default)  # as written in the config: "5/min,20/h,50/day"
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
