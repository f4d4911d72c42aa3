"""`sendguard serve` and `sendguard check-config`: the commands that read the settings."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import click

from proxy.cli.settings_flags import load_or_exit, settings_options


@click.command()
@settings_options
def serve(config: Path | None, **flags: Any) -> None:
    """Run the proxy and the admin server until SIGTERM/SIGINT."""
    settings = load_or_exit(config, flags)
    # Imported only once the configuration is valid: the server pulls in aiohttp, redis, ...
    server = importlib.import_module("proxy.server.run")
    exit_code: int = server.serve(settings)
    raise SystemExit(exit_code)


@click.command("check-config")
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
