"""The `sendguard` command line: `serve`, `check-config`, and the admin subcommands.

    serve.py            `serve`, `check-config` (flags generated in settings_flags.py)
    admin_client.py     the admin API's HTTP client and its exit codes
    admin.py            --admin-url, --token-file, --json: what every admin command shares
    render.py           tables, label/value pairs and times for the admin commands' text output
    kill_switch.py      `kill-switch engage|release|list`
    recipients.py       `suppressions list|clear`, `breakers show|reset`
    records.py          `records show|unknown|resolve`
    status.py           `status`

Admin commands exit 0 done, 1 the admin API answered an error, 2 usage error, 3 the admin URL
cannot be reached, 4 unauthorized.
"""

from __future__ import annotations

import click

from proxy import __version__
from proxy.cli import kill_switch, recipients, records, serve, status

__all__ = ["cli", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="sendguard")
def cli() -> None:
    """sendguard: an at-most-once guard proxy in front of the Twilio REST API."""


# The package's attributes stay the modules (`proxy.cli.serve` is serve.py), not the commands.
for _command in (
    serve.serve,
    serve.check_config,
    kill_switch.kill_switch,
    recipients.suppressions,
    recipients.breakers,
    records.records,
    status.status,
):
    cli.add_command(_command)


def main() -> None:
    """Console-script entry point (`sendguard`, `python -m proxy`)."""
    cli(prog_name="sendguard")
