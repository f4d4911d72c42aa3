"""The layer picture of docs/architecture.md, checked: every module under proxy/ is parsed with
`ast` and every import it makes (top level or inside a function, TYPE_CHECKING included) must
go down the layers, never up.

    foundation   decision, errors, durations, config_values, logs, metrics
    guard        the pure core
    adapters     store, upstream, killswitch, tee (I/O), sandbox (the offline Twilio)
    settings     settings, settings_fields
    server       the shell: wiring, middleware, the guarded send's I/O
    admin        the admin API and console, on top of the shell
    cli          the command line (and `python -m proxy`)

A package may import its own modules and any package of a lower layer; inside a layer only
the edges in SAME_LAYER_EDGES (settings and cli: any), and the one upward edge is in
ENTRY_POINTS. Written in terms of packages, so splitting a module inside one changes nothing.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.paths import REPO_ROOT

PROXY = REPO_ROOT / "proxy"

LAYERS = {
    "foundation": ("decision", "errors", "durations", "config_values", "logs", "metrics"),
    "guard": ("guard",),
    "adapters": ("store", "upstream", "killswitch", "tee", "sandbox"),
    "settings": ("settings", "settings_fields"),
    "server": ("server",),
    "admin": ("admin",),
    # (cli_admin: the command line before it became a package)
    "cli": ("cli", "cli_admin", "__main__"),
}
RANK = {layer: rank for rank, layer in enumerate(LAYERS)}
LAYER_OF = {package: layer for layer, packages in LAYERS.items() for package in packages}
# Within these layers any package may use another; in the others, only the listed edges.
OPEN_LAYERS = {"settings", "cli"}
SAME_LAYER_EDGES = {
    ("errors", "decision"),  # errors speak in decisions
    ("killswitch", "store"),  # the kill-switch store is a store
}
# Composition roots allowed to reach up: `serve` runs the admin app next to the proxy.
ENTRY_POINTS = {("proxy.server.run", "admin")}
# The pure core does no I/O and knows no framework (stdlib only, and not asyncio).
CORE_FORBIDDEN_LIBRARIES = {"aiohttp", "multidict", "redis", "asyncio", "prometheus_client",
                            "structlog", "pydantic", "pydantic_settings", "hiredis", "yarl"}  # fmt: skip
# Only the shell and above may depend on the web framework's server side.
NO_AIOHTTP_WEB_BELOW_SERVER = {"guard", "store", "upstream", "killswitch"}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def package_of(module: str) -> str:
    """`proxy.server.guarded` -> "server"; `proxy.errors` -> "errors"; `proxy` -> ""."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def imports_of(path: Path) -> Iterator[tuple[int, str]]:
    """(line, absolute module) for every import in the file, relative ones resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    here = module_name(path).split(".")
    is_package = path.name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here if is_package else here[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            yield node.lineno, target
            # `from proxy import settings` imports the module proxy.settings (but
            # `from proxy import __version__` only a name)
            if target == "proxy":
                for alias in node.names:
                    if (PROXY / alias.name).is_dir() or (PROXY / f"{alias.name}.py").is_file():
                        yield node.lineno, f"proxy.{alias.name}"


def modules() -> list[Path]:
    return sorted(PROXY.rglob("*.py"))


def violations() -> list[str]:
    found = []
    for path in modules():
        importer = module_name(path)
        source = package_of(importer)
        for line, target in imports_of(path):
            where = f"{path.relative_to(REPO_ROOT)}:{line}: {importer} imports {target}"
            top = target.split(".")[0]
            if source == "guard" and top in CORE_FORBIDDEN_LIBRARIES:
                found.append(f"{where} (the pure core does no I/O)")
            if source in NO_AIOHTTP_WEB_BELOW_SERVER and target.startswith("aiohttp.web"):
                found.append(f"{where} (aiohttp.web belongs to the shell)")
            if top != "proxy" or target == "proxy":
                continue
            dest = package_of(target)
            if not source or dest == source:
                continue  # proxy/__init__ and a package's own modules
            if source not in LAYER_OF or dest not in LAYER_OF:
                found.append(f"{where} (a package docs/architecture.md does not place)")
                continue
            low, high = LAYER_OF[dest], LAYER_OF[source]
            allowed = (
                RANK[low] < RANK[high]
                or (low == high and (high in OPEN_LAYERS or (source, dest) in SAME_LAYER_EDGES))
                or (importer, dest) in ENTRY_POINTS
            )
            if not allowed:
                found.append(f"{where} ({source} is in layer {high}, {dest} in {low})")
    return found


def test_every_import_goes_down_the_layers():
    assert violations() == []


def test_every_package_under_proxy_is_placed():
    packages = {package_of(module_name(path)) for path in modules()} - {""}
    assert packages <= set(LAYER_OF), f"place {packages - set(LAYER_OF)} in docs/architecture.md"


def test_nothing_imports_the_command_line_or_the_admin_app_but_their_own():
    for path in modules():
        importer = module_name(path)
        for line, target in imports_of(path):
            dest = package_of(target) if target.startswith("proxy.") else ""
            if dest in ("cli", "cli_admin"):
                assert package_of(importer) in ("cli", "cli_admin", "__main__"), (importer, line)
            if dest == "admin":
                allowed = (
                    package_of(importer) in ("admin", "cli") or (importer, dest) in ENTRY_POINTS
                )
                assert allowed, (importer, line)


@pytest.mark.parametrize(
    ("importer", "source", "expected"),
    [
        # the checker itself: an upward import is caught, a downward one is not
        ("proxy.guard.x", "from proxy.server.app import create_app", True),
        ("proxy.guard.x", "import aiohttp", True),
        ("proxy.guard.x", "from proxy.errors import KeyMismatch", False),
        ("proxy.store.x", "from proxy.server.context import CONTEXT", True),
        ("proxy.store.x", "from proxy.guard.dedup import DedupRecord", False),
        ("proxy.server.x", "from proxy.cli.admin import main", True),
        ("proxy.server.x", "from proxy.store.send_store import SendStore", False),
        ("proxy.tee.x", "from proxy.server.middleware import render_error", True),
        ("proxy.errors", "from proxy.guard.dedup import Action", True),
        ("proxy.killswitch.x", "from proxy.store.keys import KEYS", False),
        ("proxy.upstream.x", "from proxy.killswitch.model import Scope", True),
    ],
)
def test_the_checker_catches_upward_imports(tmp_path, monkeypatch, importer, source, expected):
    parts = importer.split(".")
    fake_root = tmp_path
    target = fake_root.joinpath(*parts).with_suffix(".py")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(source + "\n")
    monkeypatch.setattr(__import__(__name__, fromlist=["x"]), "REPO_ROOT", fake_root)
    monkeypatch.setattr(__import__(__name__, fromlist=["x"]), "PROXY", fake_root / "proxy")
    assert bool(violations()) is expected
