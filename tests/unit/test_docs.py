"""Docs are part of done: the README's config reference and error table follow the code."""

from __future__ import annotations

import re

from proxy import errors
from proxy.decision import Decision
from proxy.settings import Settings
from tests.paths import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text()
DEFAULT_CONFIG = (REPO_ROOT / "config" / "sendguard.toml").read_text()


def test_every_setting_is_in_the_readme_reference_and_the_default_config():
    for name in Settings.model_fields:
        assert f"| `{name}` | `SENDGUARD_{name.upper()}`" in README, name
        assert re.search(rf"^(\[\[)?{name}\b", DEFAULT_CONFIG, re.MULTILINE), name


def test_every_error_code_and_decision_is_in_the_error_table():
    for error in vars(errors).values():
        own = isinstance(error, type) and issubclass(error, errors.SendguardError)
        if own and error.code >= 79000:
            assert f"| {error.code} | `{error.decision.value}` |" in README, error.__name__
    for decision in Decision:
        assert f"`{decision.value}`" in README, decision


def test_readme_opens_with_the_two_commands():
    first_screen = "\n".join(README.splitlines()[:15])
    assert "scripts/run" in first_screen and "scripts/test" in first_screen
    assert "scripts/test" in (REPO_ROOT / ".ci" / "run").read_text()


def test_every_more_info_link_of_sendguard_lands_on_an_anchor_in_the_readme():
    for error in vars(errors).values():
        own = isinstance(error, type) and issubclass(error, errors.SendguardError)
        if own and error.code >= 79000:
            url = errors.more_info_url(error.code)
            anchor = url.rpartition("#")[2]
            assert f'<a id="{anchor}"></a>' in README, (error.__name__, url)
