"""The Dockerfile, checked without a Docker engine.

Two halves. The static half parses the Dockerfile (and .dockerignore) and checks what the image
promises: a slim multi-stage build on a base pinned by version and digest, dependencies
installed exactly as requirements.lock pins them (hash-checked), a numeric non-root user, the
exec-form `sendguard serve` entrypoint, both listeners on all interfaces, the exposed ports and
a HEALTHCHECK on the admin port. The supply-chain checks go with it: the locks pin every
dependency (the image's with hashes), CI installs under the test lock, and pyproject's version
floors are at least the releases whose APIs the code uses. The mirror half repeats the image build on this machine: it copies exactly the files the
builder stage COPYs, runs the builder stage's own RUN lines (absolute paths moved under a
temporary root), then starts the ENTRYPOINT + CMD with the runtime stage's environment from the
resulting clean virtualenv, talks to it and stops it with SIGTERM, the way `docker stop` does.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from tests.paths import REPO_ROOT
from tests.servers import free_port

DOCKERFILE = REPO_ROOT / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"
UID = 10001


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for key, args in self.instructions if key == keyword]

    def last(self, keyword: str) -> str:
        found = self.all(keyword)
        assert found, f"no {keyword} in stage {self.name or self.base}"
        return found[-1]

    def env(self) -> dict[str, str]:
        """ENV key=value pairs, later ones winning (the legacy `ENV key value` form too)."""
        values: dict[str, str] = {}
        for args in self.all("ENV"):
            words = shlex.split(args)
            if words and "=" not in words[0]:
                values[words[0]] = " ".join(words[1:])
                continue
            for word in words:
                key, _, value = word.partition("=")
                values[key] = value
        return values


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """(global ARG defaults, stages): line continuations joined, comments and parser directives dropped."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    assert not pending, "the Dockerfile ends inside a line continuation"
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "FROM":
            words = rest.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            base = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), words[0])
            stages.append(Stage(base=base, name=name))
        elif not stages:
            assert keyword == "ARG", f"only ARG may precede FROM, found {keyword}"
            key, _, value = rest.partition("=")
            args[key] = value
        else:
            stages[-1].instructions.append((keyword, rest))
    return args, stages


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(item, str) for item in value), args
    return value


def copy_sources(stage: Stage) -> list[tuple[list[str], str]]:
    """The build-context COPYs of a stage (not `COPY --from=`): ([sources], destination)."""
    copies = []
    for args in stage.all("COPY"):
        words = args.split()
        if any(word.startswith("--from=") for word in words):
            continue
        paths = [word for word in words if not word.startswith("--")]
        copies.append((paths[:-1], paths[-1]))
    return copies


@pytest.fixture(scope="module")
def dockerfile() -> tuple[dict[str, str], list[Stage]]:
    return parse_dockerfile(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def builder(dockerfile) -> Stage:
    return dockerfile[1][0]


@pytest.fixture(scope="module")
def runtime(dockerfile) -> Stage:
    return dockerfile[1][-1]


# --- the static half --------------------------------------------------------------------------


def test_multi_stage_on_a_slim_python_base_pinned_by_digest(dockerfile):
    _args, stages = dockerfile
    assert len(stages) >= 2
    assert stages[0].name == "builder"
    pinned = re.compile(r"python:3\.(1[1-9])\.\d+-slim-bookworm@sha256:[0-9a-f]{64}")
    for stage in stages:
        found = pinned.fullmatch(stage.base)
        assert found, f"{stage.base}: an exact python release and its image digest"
        assert int(found.group(1)) >= 11, "requires-python is >= 3.11"
    assert len({stage.base for stage in stages}) == 1, "builder and runtime on the same base"
    runtime = stages[-1]
    assert any(args.startswith("--from=builder ") for args in runtime.all("COPY"))
    assert not copy_sources(runtime), "the runtime stage takes nothing from the build context"
    assert all("pip" not in run for run in runtime.all("RUN")), "no build tools at run time"


def test_runs_as_a_numeric_non_root_user(runtime):
    user = runtime.last("USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) == UID, (
        f"USER {user}: Kubernetes' runAsNonRoot needs a number"
    )
    assert not gid or (gid.isdigit() and int(gid) != 0)
    assert any(f"--uid {UID}" in run for run in runtime.all("RUN")), (
        "the user exists in /etc/passwd"
    )
    # USER comes after every RUN: nothing at run time has root's rights.
    keywords = [key for key, _ in runtime.instructions]
    assert keywords.index("USER") > max(i for i, key in enumerate(keywords) if key == "RUN")


def test_exec_form_entrypoint_is_sendguard_serve(runtime):
    assert exec_form(runtime.last("ENTRYPOINT")) == ["sendguard"]
    assert exec_form(runtime.last("CMD")) == ["serve"]
    path = runtime.env()["PATH"].split(":")
    venv = next(args.split()[-1] for args in runtime.all("COPY") if args.startswith("--from="))
    assert path[0] == f"{venv}/bin", "`sendguard` resolves to the virtualenv's console script"


def test_listens_on_all_interfaces_and_exposes_both_ports(runtime):
    env = runtime.env()
    assert env["SENDGUARD_LISTEN"] == "0.0.0.0:8080"
    assert env["SENDGUARD_ADMIN_LISTEN"] == "0.0.0.0:8081"
    exposed = {port for args in runtime.all("EXPOSE") for port in args.split()}
    assert exposed == {"8080", "8081"}


def test_healthcheck_asks_the_admin_port_without_curl(runtime):
    healthcheck = runtime.last("HEALTHCHECK")
    options, _, command = healthcheck.partition(" CMD ")
    assert "--interval=" in options and "--timeout=" in options
    argv = exec_form(command)
    assert argv[0] == "python", "a slim image has no curl: the venv's python asks"
    assert "/healthz" in argv[-1] and "SENDGUARD_ADMIN_LISTEN" in argv[-1]


def test_dockerignore_is_an_allowlist_of_what_the_builder_copies(builder):
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", "everything else (.git, .venv, caches, local data) stays out"
    allowed = {pattern[1:].rstrip("/") for pattern in patterns if pattern.startswith("!")}
    copied = {source.rstrip("/") for sources, _ in copy_sources(builder) for source in sources}
    assert copied == allowed
    for source in copied:
        assert (REPO_ROOT / source).exists(), source


def lock_pins(path: Path) -> dict[str, tuple[str, list[str]]]:
    """{normalised name: (version, [hashes])} of a pip-compile / uv lock file."""
    pins: dict[str, tuple[str, list[str]]] = {}
    current = None
    for line in path.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        found = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", line)
        if found:
            current = re.sub(r"[-_.]+", "-", found.group(1)).lower()
            pins[current] = (found.group(2), [])
            continue
        assert current, line
        pins[current][1].extend(re.findall(r"--hash=sha256:([0-9a-f]{64})", line))
    return pins


def pyproject_requirements(extra: str | None = None) -> list[Requirement]:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    wanted = project["optional-dependencies"][extra] if extra else project["dependencies"]
    return [Requirement(item) for item in wanted]


def test_the_builder_installs_exactly_the_hash_checked_lock(builder):
    assert any("requirements.lock" in sources for sources, _ in copy_sources(builder))
    install = next(run for run in builder.all("RUN") if "python -m venv" in run)
    assert "pip install --require-hashes --no-deps -r requirements.lock" in install
    assert "pip install --no-deps /wheels/" in install, "sendguard itself resolves nothing"
    assert "pip check" in install


def test_the_image_lock_pins_every_dependency_with_hashes():
    pins = lock_pins(REPO_ROOT / "requirements.lock")
    for name, (version, hashes) in pins.items():
        assert hashes, f"{name}=={version} has no hash"
    for requirement in pyproject_requirements():
        name = re.sub(r"[-_.]+", "-", requirement.name).lower()
        assert name in pins, f"{requirement} is not locked"
        assert requirement.specifier.contains(pins[name][0]), f"{requirement} vs {pins[name][0]}"


def test_ci_installs_under_the_test_lock():
    pins = lock_pins(REPO_ROOT / "requirements-test.lock")
    image = lock_pins(REPO_ROOT / "requirements.lock")
    for requirement in pyproject_requirements() + pyproject_requirements("test"):
        name = re.sub(r"[-_.]+", "-", requirement.name).lower()
        assert name in pins, f"{requirement} is not in requirements-test.lock"
        assert requirement.specifier.contains(pins[name][0]), f"{requirement} vs {pins[name][0]}"
    assert {name: version for name, (version, _) in image.items()} == {
        name: pins[name][0] for name in image
    }, "the image and CI run the same versions"
    script = (REPO_ROOT / "scripts" / "test").read_text()
    assert "PIP_CONSTRAINT=" in script and "requirements-test.lock" in script


# The oldest release of each dependency that has what the code uses (a lower floor in
# pyproject.toml would let pip install a release the code cannot run on).
API_FLOORS = [
    (r"web\.RequestKey\(", "aiohttp", "3.14"),
    (r"\.is_enabled_for\(", "structlog", "25.1"),
    (r"\bNoDecode\b", "pydantic-settings", "2.7"),
]


@pytest.mark.parametrize(("usage", "package", "floor"), API_FLOORS)
def test_version_floors_cover_the_apis_the_code_uses(usage, package, floor):
    sources = "\n".join(path.read_text() for path in (REPO_ROOT / "proxy").rglob("*.py"))
    assert re.search(usage, sources), f"the code no longer uses {usage}: drop this floor"
    (requirement,) = [r for r in pyproject_requirements() if r.name == package]
    lowest = min(
        (Version(spec.version) for spec in requirement.specifier if spec.operator == ">="),
        default=None,
    )
    assert lowest is not None and lowest >= Version(floor), f"{requirement}: needs >={floor}"


# --- the mirror half --------------------------------------------------------------------------


@dataclass
class Image:
    root: Path  # stands for the image's `/`
    env: dict[str, str]  # the runtime stage's ENV, paths moved under root
    argv: list[str]  # ENTRYPOINT + CMD
    workdir: Path
    healthcheck: list[str]


def under(root: Path, text: str) -> str:
    """Move every absolute path in a Dockerfile argument under root."""
    return re.sub(r"(?<![\w./~-])/(?=[\w.])", f"{root}/", text)


@pytest.fixture(scope="module")
def image(tmp_path_factory, builder, runtime) -> Image:
    """The builder stage, executed here: copy the context files, run its RUN lines."""
    root = tmp_path_factory.mktemp("image")
    workdir = Path(under(root, builder.last("WORKDIR")))
    workdir.mkdir(parents=True)
    for sources, destination in copy_sources(builder):
        target = workdir / destination
        for source in sources:
            path = REPO_ROOT / source
            if path.is_dir():
                shutil.copytree(
                    path, target, ignore=shutil.ignore_patterns("__pycache__", "*.py[cod]")
                )
            else:
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target / path.name)
    # The image's `python` is a CPython >= 3.11; here it is the interpreter running the tests.
    bin_dir = root / "usr-local-bin"
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("SENDGUARD_", "PIP_"))},
        **builder.env(),
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
    }
    env.pop("VIRTUAL_ENV", None)
    # Unlike the image build, keep pip's cache: the same wheels are fetched on every run.
    env.pop("PIP_NO_CACHE_DIR", None)
    for run in builder.all("RUN"):
        result = subprocess.run(
            ["/bin/sh", "-c", under(root, run)],
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, (
            f"RUN {run}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )

    runtime_env = {key: under(root, value) for key, value in runtime.env().items()}
    runtime_env["PATH"] = runtime_env["PATH"].replace("$PATH", "/usr/local/bin:/usr/bin:/bin")
    runtime_workdir = Path(under(root, runtime.last("WORKDIR")))
    runtime_workdir.mkdir(parents=True, exist_ok=True)
    healthcheck = exec_form(runtime.last("HEALTHCHECK").partition(" CMD ")[2])
    return Image(
        root=root,
        env=runtime_env,
        argv=exec_form(runtime.last("ENTRYPOINT")) + exec_form(runtime.last("CMD")),
        workdir=runtime_workdir,
        healthcheck=healthcheck,
    )


@dataclass
class Container:
    process: subprocess.Popen[bytes]
    env: dict[str, str]
    proxy_url: str
    admin_url: str
    log: Path


def get(url: str, timeout: float = 2.0) -> tuple[int, dict[str, str]]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers)


def wait_until_answering(container: Container, seconds: float = 30.0) -> dict[str, str]:
    deadline = time.monotonic() + seconds
    while True:
        assert container.process.poll() is None, container.log.read_text()[-3000:]
        try:
            return get(container.proxy_url + "/")[1]
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            if time.monotonic() > deadline:
                raise AssertionError(container.log.read_text()[-3000:]) from None
            time.sleep(0.1)


def stop(container: Container, timeout: float) -> int:
    container.process.send_signal(signal.SIGTERM)
    try:
        return container.process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        container.process.kill()
        container.process.wait()
        raise


@pytest.fixture
def container(image: Image, tmp_path) -> Iterator[Container]:
    """`docker run` of the mirrored image: its env only, loopback ports, the sandbox upstream."""
    proxy = admin = free_port()
    while admin == proxy:
        admin = free_port()
    env = {
        **image.env,
        "HOME": str(tmp_path),
        "SENDGUARD_LISTEN": f"127.0.0.1:{proxy}",
        "SENDGUARD_ADMIN_LISTEN": f"127.0.0.1:{admin}",
        "SENDGUARD_UPSTREAM": "sandbox",
    }
    executable = shutil.which(image.argv[0], path=env["PATH"])
    assert executable and Path(executable).is_relative_to(image.root), executable
    log = tmp_path / "container.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [executable, *image.argv[1:]],
            cwd=image.workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    running = Container(process, env, f"http://127.0.0.1:{proxy}", f"http://127.0.0.1:{admin}", log)
    yield running
    if process.poll() is None:
        stop(running, timeout=30)


@pytest.mark.slow
def test_the_wheel_holds_the_whole_package(image):
    """The installed package is the wheel's copy, and nothing under proxy/ was left out of it."""
    python = image.root / "opt/sendguard/bin/python"
    found = subprocess.run(
        [str(python), "-c", "import proxy, pathlib; print(pathlib.Path(proxy.__file__).parent)"],
        cwd=image.workdir,
        env=image.env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    installed = Path(found)
    assert installed.is_relative_to(image.root / "opt/sendguard"), installed
    source = REPO_ROOT / "proxy"
    expected = {
        path.relative_to(source)
        for path in source.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }
    shipped = {
        path.relative_to(installed)
        for path in installed.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }
    assert expected <= shipped, f"missing from the wheel: {sorted(map(str, expected - shipped))}"


@pytest.mark.slow
def test_the_entrypoint_runs_from_the_clean_venv(image):
    result = subprocess.run(
        [*image.argv[:1], "--version"],
        cwd=image.workdir,
        env=image.env,
        capture_output=True,
        text=True,
        check=True,
    )
    version = re.search(r'^version = "([^"]+)"', (REPO_ROOT / "pyproject.toml").read_text(), re.M)
    assert version and version.group(1) in result.stdout


@pytest.mark.slow
def test_the_image_serves_the_proxy_port(container):
    headers = wait_until_answering(container)
    assert headers.get("X-Request-Id"), headers


@pytest.mark.slow
def test_the_image_answers_healthz_on_the_admin_port(container):
    wait_until_answering(container)
    status, _ = get(container.admin_url + "/healthz")
    assert status == 200


@pytest.mark.slow
def test_the_dockerfile_healthcheck_passes(image, container):
    wait_until_answering(container)
    argv = [*image.healthcheck]
    argv[0] = shutil.which(argv[0], path=container.env["PATH"]) or argv[0]
    result = subprocess.run(argv, env=container.env, capture_output=True, text=True, timeout=10)
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.slow
def test_the_healthcheck_fails_when_nothing_listens(image, tmp_path):
    """The HEALTHCHECK command itself: it reports unhealthy (exit 1) when the port is dead."""
    env = {**image.env, "SENDGUARD_ADMIN_LISTEN": f"0.0.0.0:{free_port()}"}
    argv = [shutil.which(image.healthcheck[0], path=env["PATH"]), *image.healthcheck[1:]]
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=10)
    assert result.returncode == 1, result.stderr[-2000:]


@pytest.mark.slow
def test_sigterm_stops_the_image_cleanly(container):
    wait_until_answering(container)
    grace = 25  # SENDGUARD_SHUTDOWN_GRACE's default; idle, it should take far less
    started = time.monotonic()
    assert stop(container, timeout=grace + 5) == 0, container.log.read_text()[-3000:]
    assert time.monotonic() - started < 10, "an idle sendguard stops well inside its grace"
    assert "Traceback" not in container.log.read_text()
