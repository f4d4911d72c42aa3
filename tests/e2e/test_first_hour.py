"""The first hour (issue 18): the README's quick-start and "Try it in five minutes" work as
written, start-up errors are one line with exit code 2, and upstream 429 retries wait for
`Retry-After`.

The README test takes the bash blocks marked `<!-- first-hour: server -->` and
`<!-- first-hour: client -->` and runs their commands verbatim with bash, in the repository:
the server block up to its `scripts/run --upstream sandbox` (run in the background; the
`scripts/test` line is the whole suite and is not run), then every command of the client block
in one shell (so its variables and its `send` helper carry over), each one's output captured.
Each command's `# → …` comment is its expected answer:

- `NNN decision` (a decision of the README's table): that status line and that
  `X-Sendguard-Decision`; `five NNN …` also counts them;
- `` `text` ``: that text in the output;
- `the same SM…`: the Message SID in the output is one an earlier answer carried.

Two things differ from a user's terminal, both through the environment the commands inherit:
the ports (free ones, in SENDGUARD_LISTEN / SENDGUARD_ADMIN_LISTEN, which the README's commands
follow), and SENDGUARD_VENV (scripts/_venv.sh's own variable): a stand-in venv whose `sendguard`
is this interpreter's `python -m proxy`, stamped as installed, so that `scripts/run` runs as is
without re-installing into the shared .venv.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web

from proxy.decision import Decision
from tests.environ import clear_sendguard_env, env_without_sendguard
from tests.harness import SENDER, post_send
from tests.paths import REPO_ROOT
from tests.servers import free_port
from tests.webapps import serve_app

README = (REPO_ROOT / "README.md").read_text()
SERVE = "scripts/run --upstream sandbox"
DECISIONS = frozenset(d.value for d in Decision)
COUNTS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6}
SID = re.compile(r'"sid": "(SM[0-9a-f]{32})"')


# -- the README's blocks ----------------------------------------------------------------------


def marked_block(kind: str) -> str:
    found = re.findall(rf"<!-- first-hour: {kind}\b.*?-->\s*\n```bash\n(.*?)\n```", README, re.S)
    assert len(found) == 1, f"the README needs one ```bash block after <!-- first-hour: {kind} -->"
    return str(found[0])


@dataclass(frozen=True)
class Step:
    command: str
    expect: str  # the `# → …` comment, "" if none


def steps(block: str) -> list[Step]:
    """Commands: one line each; a line ending in `\\` or `|` continues; `name() {` runs to
    the line `}`. Comment lines and blank lines are skipped."""
    lines = block.splitlines()
    found: list[Step] = []
    i = 0
    while i < len(lines):
        chunk = [lines[i]]
        if not chunk[0].strip() or chunk[0].lstrip().startswith("#"):
            i += 1
            continue
        if re.match(r"\s*\w+\(\)\s*\{", chunk[0]):
            while chunk[-1].strip() != "}":
                i += 1
                chunk.append(lines[i])
        else:
            while chunk[-1].rstrip().endswith(("\\", "|")):
                i += 1
                chunk.append(lines[i])
        i += 1
        command, _, expect = "\n".join(chunk).partition("# →")
        found.append(Step(command.rstrip(), expect.strip()))
    return found


def check(step: Step, out: str, code: int, sids_seen: set[str]) -> None:
    where = f"{step.command!r} answered (exit {code}):\n{out}"
    assert code == 0, where
    for count, status, decision in re.findall(r"(?:\b([a-z]+) )?\b(\d{3}) ([a-z][a-z-]*)", step.expect):  # fmt: skip
        if decision not in DECISIONS:
            continue
        assert re.search(rf"^HTTP/[\d.]+ {status}\b", out, re.M), where
        assert re.search(rf"^X-Sendguard-Decision: {decision}$", out, re.M | re.I), where
        if count in COUNTS:
            assert len(re.findall(rf"^HTTP/[\d.]+ {status}\b", out, re.M)) == COUNTS[count], where
    for literal in re.findall(r"`([^`]+)`", step.expect):
        assert literal in out, f"{literal!r} missing: {where}"
    if "the same SM" in step.expect:
        assert SID.findall(out), where
        assert set(SID.findall(out)) <= sids_seen, f"not an earlier answer's SID: {where}"


def test_the_readme_blocks_parse_and_cover_the_first_hour():
    server = steps(marked_block("server"))
    assert [s.command.split()[0] for s in server] == ["export", "scripts/run", "scripts/test"]
    assert server[0].command.startswith("export SENDGUARD_ADMIN_TOKEN=")  # the runbook needs one
    assert any(s.command.startswith(SERVE) for s in server)
    client = steps(marked_block("client"))
    text = "\n".join(s.command + " " + s.expect for s in client)
    for needed in ("Idempotency-Key", "X-Sandbox-Fault: 500-after-create", "kill-switch engage",
                   "kill-switch release", "replayed", "rate-limited", "killed", "key-mismatch",
                   "scripts/run status"):  # fmt: skip
        assert needed in text, needed
    for step in client:  # every request and every CLI call says what comes back
        if step.command.startswith(("send ", "scripts/run", "for ")):
            assert step.expect, f"no `# →` answer for {step.command!r}"


# -- running them -----------------------------------------------------------------------------


@pytest.fixture
def stand_in_venv(tmp_path: Path) -> Path:
    """A venv for scripts/_venv.sh that is already installed: `sendguard` is this interpreter."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    launcher = venv / "bin" / "sendguard"
    launcher.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m proxy "$@"\n')
    launcher.chmod(0o755)
    stamp = hashlib.sha256((REPO_ROOT / "pyproject.toml").read_bytes()).hexdigest()
    (venv / ".sendguard-installed").write_text(stamp + "\n")
    return venv


def first_hour_env(venv: Path, listen: str, admin_listen: str) -> dict[str, str]:
    env = env_without_sendguard()
    env.update(SENDGUARD_VENV=str(venv), PYTHON=sys.executable,
               SENDGUARD_LISTEN=listen, SENDGUARD_ADMIN_LISTEN=admin_listen)  # fmt: skip
    return env


def wait_ready(admin_url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    import urllib.request

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the quick-start server exited:\n{log.read_text()}"
        try:
            with urllib.request.urlopen(admin_url + "/readyz", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"the quick-start server did not get ready:\n{log.read_text()}")


@pytest.fixture
def quick_start_server(stand_in_venv: Path, tmp_path: Path) -> Iterator[dict[str, str]]:
    """The server block, as written: its lines up to `scripts/run --upstream sandbox`."""
    listen, admin_listen = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    env = first_hour_env(stand_in_venv, listen, admin_listen)
    block = steps(marked_block("server"))
    [serve_at] = [i for i, s in enumerate(block) if s.command.startswith(SERVE)]
    assert [s.command.split()[0] for s in block[serve_at + 1 :]] == ["scripts/test"]
    script = "\n".join([*(s.command for s in block[:serve_at]), "exec " + block[serve_at].command])
    log = tmp_path / "server.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            ["bash", "-c", script], cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL,
            stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        wait_ready(f"http://{admin_listen}", process, log)
        yield env
        assert process.poll() is None, f"the server died during the walkthrough:\n{log.read_text()}"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=40) == 0, log.read_text()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.mark.slow
def test_the_readme_quick_start_and_try_it_work_as_written(quick_start_server, tmp_path):
    client = steps(marked_block("client"))
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    script = "\n".join(
        f"{{ {step.command}\n}} > {outputs}/{i}.out 2>&1; echo $? > {outputs}/{i}.rc"
        for i, step in enumerate(client)
    )
    # A second terminal: the server's environment minus its token (the block exports its own).
    env = {k: v for k, v in quick_start_server.items() if k != "SENDGUARD_ADMIN_TOKEN"}
    subprocess.run(["bash", "-c", script], cwd=REPO_ROOT, env=env, check=True, timeout=300,
                   stdin=subprocess.DEVNULL)  # fmt: skip
    sids_seen: set[str] = set()
    for i, step in enumerate(client):
        out = (outputs / f"{i}.out").read_text().replace("\r", "")
        code = int((outputs / f"{i}.rc").read_text())
        check(step, out, code, sids_seen)
        sids_seen |= set(SID.findall(out))
        assert "Traceback" not in out, out


def test_the_cli_says_when_the_server_has_no_admin_token(stand_in_venv, tmp_path):
    """The runbook on a server started without a token: the CLI names the fix."""
    listen, admin_listen = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    env = first_hour_env(stand_in_venv, listen, admin_listen)
    log = tmp_path / "server.log"
    with log.open("wb") as sink:
        server = subprocess.Popen(
            ["scripts/run", "--upstream", "sandbox"], cwd=REPO_ROOT, env=env,
            stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_ready(f"http://{admin_listen}", server, log)
        for token in (None, "some-token"):
            cli_env = env if token is None else {**env, "SENDGUARD_ADMIN_TOKEN": token}
            ran = subprocess.run(["scripts/run", "kill-switch", "list"], cwd=REPO_ROOT, env=cli_env,
                                 capture_output=True, text=True, timeout=60)  # fmt: skip
            assert ran.returncode == 4, ran
            assert ran.stderr.strip() == (
                "sendguard: unauthorized (401): this sendguard has no admin token, so its admin "
                "API refuses every call; start it with SENDGUARD_ADMIN_TOKEN=<a secret> and give "
                "the CLI the same SENDGUARD_ADMIN_TOKEN"
            ), ran
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=40)


async def test_the_admin_api_says_which_401_it_is(proxies, fake_twilio, http):
    """SPEC §5: with no token configured every /v1/ call is refused; the body says why."""
    no_token = await proxies.start(upstream=fake_twilio.url)
    with_token = await proxies.start(upstream=fake_twilio.url, admin_token="first-hour-token")
    cases = [
        (no_token, {}, "admin-token-not-configured"),
        (no_token, {"Authorization": "Bearer anything"}, "admin-token-not-configured"),
        (with_token, {}, "admin-token-missing"),
        (with_token, {"Authorization": "Bearer first-hour-tokem"}, "admin-token-invalid"),
        (with_token, {"Authorization": "Basic first-hour-token"}, "admin-token-invalid"),
    ]
    for proxy, headers, code in cases:
        async with http.get(proxy.admin_url + "/v1/status", headers=headers) as answer:
            body = await answer.json()
        assert (answer.status, body["error"]["code"], body["error"]["status"]) == (401, code, 401)
        assert "first-hour-token" not in body["error"]["message"]
    async with http.get(
        with_token.admin_url + "/v1/status", headers={"Authorization": "Bearer first-hour-token"}
    ) as answer:
        assert answer.status == 200
        assert (await answer.json())["store_kind"] == "embedded"


@pytest.mark.parametrize(
    ("overrides", "kind"),
    [
        ({}, "embedded"),
        ({"redis_url": "redis://redis:6379/0"}, "standalone"),
        ({"redis_url": "unix:///run/redis.sock"}, "standalone"),
        ({"redis_url": "redis://a:7000,redis://b:7001", "redis_cluster": "true"}, "cluster"),
        ({"redis_url": "redis+sentinel://s1:26379,s2:26379/mymaster"}, "sentinel"),
    ],
)
def test_store_kind(monkeypatch, overrides, kind):
    from proxy.admin.app import store_kind
    from proxy.settings import load_settings

    clear_sendguard_env(monkeypatch)
    assert store_kind(load_settings(**overrides)) == kind


# -- start-up errors: one line naming the setting, exit 2, no traceback ------------------------


def serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    child_env = env_without_sendguard()
    child_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "proxy", "serve", *args], cwd=REPO_ROOT, env=child_env,
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def one_line_error(ran: subprocess.CompletedProcess[str], *names: str) -> str:
    assert ran.returncode == 2, ran
    assert "Traceback" not in ran.stderr, ran.stderr
    lines = ran.stderr.splitlines()
    assert len(lines) == 1, ran.stderr
    assert lines[0].startswith("sendguard: "), lines
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def test_proxy_port_in_use(taken_port):
    ran = serve("--listen", f"127.0.0.1:{taken_port}", "--admin-listen", f"127.0.0.1:{free_port()}")
    line = one_line_error(ran, f"127.0.0.1:{taken_port}", "already in use", "SENDGUARD_LISTEN")
    assert "admin_listen" not in line


def test_admin_port_in_use(taken_port):
    ran = serve("--listen", f"127.0.0.1:{free_port()}", "--admin-listen", f"127.0.0.1:{taken_port}")
    one_line_error(ran, f"127.0.0.1:{taken_port}", "already in use", "SENDGUARD_ADMIN_LISTEN")


def test_both_ports_the_same():
    port = free_port()
    ran = serve("--listen", f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{port}")
    one_line_error(ran, "already in use", "SENDGUARD_ADMIN_LISTEN")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "no such file"),
        ("directory", "not a file"),
        (b'listen = "\xff\xfe"\n', "not UTF-8"),
        (b"listen = [\n", "invalid TOML"),
        (b"listen = 8080\n", "listen: input should be a valid string"),
    ],
    ids=["missing", "a-directory", "not-utf8", "bad-toml", "bad-value"],
)
def test_unreadable_or_invalid_config_file(tmp_path, content, expected):
    path = tmp_path / "sendguard.toml"
    if content == "directory":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    for ran in (serve("--config", str(path)), serve(env={"SENDGUARD_CONFIG": str(path)})):
        line = one_line_error(ran, expected)
        if expected != "listen: input should be a valid string":
            assert "config file (--config / SENDGUARD_CONFIG)" in line and str(path) in line


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file whatever its mode")
def test_config_file_without_read_permission(tmp_path):
    path = tmp_path / "sendguard.toml"
    path.write_text('listen = "127.0.0.1:8080"\n')
    path.chmod(0)
    one_line_error(serve("--config", str(path)), "cannot read", "Permission denied")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://user:s3cret@[::1:6379/0", "malformed URL"),
        ("redis://user:s3cret@redis:port/0", "malformed URL"),
        ("http://user:s3cret@redis:6379", "unsupported scheme"),
        ("redis://user:s3cret@:6379/0", "needs a host"),
        ("redis://user:s3cret@redis:6379/zero", "database number"),
        ("redis://user:s3cret@redis:6379/0?socket_timeout=soon", "socket_timeout"),
        ("redis://user:s3cret@redis:6379/0?sockettimeout=1", "unknown query parameter"),
    ],
)
def test_malformed_store_url(url, expected):
    for ran in (serve("--redis-url", url), serve(env={"SENDGUARD_REDIS_URL": url})):
        line = one_line_error(ran, "redis_url", expected)
        assert "s3cret" not in line, "the store URL's password was printed"


# -- upstream 429: never sooner than Retry-After ----------------------------------------------


@dataclass
class Throttled:
    """A fake Twilio that answers the first `refusals` creates 429 + `Retry-After: 1`."""

    refusals: int
    arrivals: list[float]


async def start_throttled(refusals: int) -> tuple[web.AppRunner, str, Throttled]:
    state = Throttled(refusals, [])

    async def create(request: web.Request) -> web.Response:
        state.arrivals.append(time.monotonic())
        await request.read()
        if len(state.arrivals) <= state.refusals:
            body = {"code": 20429, "message": "Too Many Requests", "status": 429}
            return web.json_response(body, status=429, headers={"Retry-After": "1"})
        return web.json_response({"sid": "SM" + "a" * 32, "status": "queued"}, status=201)

    app = web.Application()
    app.router.add_post("/2010-04-01/Accounts/{account}/Messages.json", create)
    runner, url = await serve_app(app)
    return runner, url, state


@pytest.fixture
async def throttled_upstream():
    runners: list[web.AppRunner] = []

    async def start(refusals: int) -> tuple[str, Throttled]:
        runner, url, state = await start_throttled(refusals)
        runners.append(runner)
        return url, state

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.mark.slow
@pytest.mark.parametrize("jitter", ["lowest", "highest", "seeded"])
async def test_a_429_retry_never_precedes_retry_after(
    proxies, throttled_upstream, http, monkeypatch, jitter
):
    url, upstream = await throttled_upstream(refusals=3)
    proxy = await proxies.start(upstream=url, upstream_429_budget=5, recipient_limits="off")
    uniform = random.uniform
    if jitter == "lowest":  # the old jitter's worst case: 0.8 x Retry-After
        monkeypatch.setattr(random, "uniform", lambda a, b: min(a, b))
    elif jitter == "highest":
        monkeypatch.setattr(random, "uniform", lambda a, b: max(a, b))
    else:
        seeded = random.Random(18)
        monkeypatch.setattr(random, "uniform", seeded.uniform)
    started = time.monotonic()
    status, headers, _ = await post_send(http, proxy.url, {"To": "+15558675310", "From": SENDER, "Body": "x"})  # fmt: skip
    monkeypatch.setattr(random, "uniform", uniform)
    assert (status, headers["X-Sendguard-Decision"]) == (201, "forwarded")
    gaps = [b - a for a, b in zip(upstream.arrivals, upstream.arrivals[1:], strict=False)]
    assert len(gaps) == 3, upstream.arrivals
    assert all(gap >= 1.0 for gap in gaps), f"a retry came before Retry-After: {gaps}"
    assert all(gap <= 1.2 + 0.15 for gap in gaps), f"more than 20 % jitter on top: {gaps}"
    assert time.monotonic() - started < 5 + 0.5


async def test_429_retries_stay_within_the_budget(proxies, throttled_upstream, http):
    """Budget 1.5 s, Retry-After 1: one retry fits (its jitter cut at the budget's end), the
    second would not start before the budget ends, so the 429 goes back."""
    url, upstream = await throttled_upstream(refusals=100)
    proxy = await proxies.start(upstream=url, upstream_429_budget=1.5, recipient_limits="off")
    started = time.monotonic()
    status, headers, _ = await post_send(http, proxy.url, {"To": "+15558675310", "From": SENDER, "Body": "y"})  # fmt: skip
    took = time.monotonic() - started
    assert (status, headers["X-Sendguard-Decision"]) == (429, "forwarded")
    assert len(upstream.arrivals) == 2
    assert 1.0 <= upstream.arrivals[1] - upstream.arrivals[0] <= 1.5 + 0.1
    assert took < 1.5 + 0.5
