"""The claim protocol's Promela model (model/claim.pml), checked exhaustively by spin.

Every variant is one bounded configuration of the model: spin generates a verifier (pan.c),
gcc compiles it, and pan explores every reachable state. A variant that must verify has to end
with "errors: 0", a complete search (depth limit and memory not hit) and every statement of the
final check reached (so the properties were not vacuously true). A variant that must be
rejected has to produce an error, a trail file, and the named assertion in the replayed trail.
model/README.md explains the properties, the assumptions and the variants.

Needs `spin` and `gcc` (scripts/test installs the Debian package `spin`): without them this
module fails when CI=true and is skipped otherwise.

Also a command line, for people: `python tests/unit/test_model.py [--bfs] [variant ...]` checks the
named variants (default: all), prints state counts and times, and for each counterexample the
trail's events (`--bfs`: the shortest trail instead of the first one found).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.paths import REPO_ROOT

MODEL = REPO_ROOT / "model" / "claim.pml"
PAN_DEPTH = 10_000  # the deepest variant reaches ~1,000 steps
PAN_HASH = 22  # 2**22 hash slots: ample for the largest variant (~360k states)
PAN_MEMORY_MB = 1024
PAN_TIMEOUT = 300  # seconds per variant: a safety net only (the largest takes ~5 s)


@dataclass(frozen=True)
class Variant:
    name: str
    what: str
    defines: str  # the model's settings, "KEY=VALUE ..." (spin -DKEY=VALUE)
    verifies: bool
    violates: str = ""  # rejected: the failed assertion's text ("a|b": either, whichever first)


AS_IS = "the code as it is (with the three fixes the model found, FIXED=1)"
FIXED = "the code as it is (FIXED=1)"
BEFORE = "the code before the fixes"

VARIANTS = [
    # -- must verify: P1 at most one create, P2 exclusive claim, P3 no stuck state, P4 no lost
    # outcome, no invalid end state. All of them: lost answers, refused calls, one crash.
    Variant(
        "shared",
        f"{AS_IS}: 3 clients (2 on instance 0, 1 on instance 1), 1 store fault, 1 crash",
        "OWNERS=3 FAULTS=1 MAXPOLL=0",
        verifies=True,
    ),
    Variant(
        "shared-retries",
        f"{AS_IS}: 2 clients x 2 requests each (a waiter re-polls once), 1 store fault, 1 crash",
        "OWNERS=2 ATTEMPTS=2 FAULTS=1",
        verifies=True,
    ),
    Variant(
        "shared-faults",
        f"{AS_IS}: 2 clients, 3 store faults (lost answers, refused calls, retries), 1 crash",
        "OWNERS=2 FAULTS=3",
        verifies=True,
    ),
    Variant(
        "outage-closed",
        f"{AS_IS}: the shared store goes down and comes back, on_store_error=closed",
        "OUTAGE=1 OWNERS=2 FAULTS=1",
        verifies=True,
    ),
    Variant(
        "failover-min-replicas",
        f"{AS_IS}: a failover losing unreplicated writes, store_min_replicas=1 (WAIT)",
        "FAILOVER=1 MIN_REPLICAS=1 OWNERS=2 FAULTS=1",
        verifies=True,
    ),
    Variant(
        "short-lease",
        f"{AS_IS}: a lease that may end while its owner still sends (UNKNOWN, never a resend)",
        "SHORT_LEASE=1 OWNERS=2 FAULTS=2",
        verifies=True,
    ),
    Variant(
        "outage-closed-one-instance-fixed",
        f"{FIXED}: both clients on one instance, outage, closed (the journal keeps every outcome)",
        "FIXED=1 OUTAGE=1 OWNERS=2 SPREAD=0 FAULTS=1",
        verifies=True,
    ),
    Variant(
        "outage-local-fixed",
        f"{FIXED}: both clients on one instance (a sidecar's app), on_store_error=local, merge",
        "FIXED=1 OUTAGE=1 LOCAL_MODE=1 SPREAD=0 OWNERS=2 FAULTS=1",
        verifies=True,
    ),
    # -- expected counterexamples: the limits SPEC 3.4 documents, shown by the model
    Variant(
        "failover-no-min-replicas",
        "store_min_replicas=0: a failover loses a fresh claim, a duplicate claims and sends",
        "FAILOVER=1 OWNERS=2 FAULTS=0 CHECK_EXCLUSIVE=0",
        verifies=False,
        violates="creates<=1",
    ),
    Variant(
        "local-other-instance",
        "on_store_error=local dedups within one instance only: a retry on another instance",
        "FIXED=1 OUTAGE=1 LOCAL_MODE=1 OWNERS=2 FAULTS=0 CHECK_EXCLUSIVE=0",
        verifies=False,
        violates="creates<=1",
    ),
    # -- the code before the fixes: defects the model found (each with the other two applied)
    Variant(
        "defect-journal-drops-outcome",
        f"{BEFORE}: SettlementJournal._keep drops an older pending outcome (outage, closed)",
        "FIXED=0 OUTAGE=1 OWNERS=2 SPREAD=0 FAULTS=0 CRASHES=0",
        verifies=False,
        violates="tok[0]",
    ),
    Variant(
        "defect-local-ignores-shared-inflight",
        f"{BEFORE}: a send guarded by the shared store runs on while local mode guards its retry",
        "OUTAGE=1 LOCAL_MODE=1 SPREAD=0 OWNERS=2 FAULTS=0 LOCAL_SEES_SHARED=0 CHECK_EXCLUSIVE=0",
        verifies=False,
        violates="creates<=1",
    ),
    Variant(
        "defect-merge-before-journal",
        f"{BEFORE}: the merge runs while a release is still owed: the outage record is lost",
        "OUTAGE=1 LOCAL_MODE=1 SPREAD=0 OWNERS=2 FAULTS=0 MERGE_AFTER_JOURNAL=0",
        verifies=False,
        violates="creates<=1",
    ),
    # -- deliberately broken protocols: the model must reject each
    Variant(
        "broken-release-on-ambiguous",
        "an ambiguous upstream answer releases the claim instead of marking it UNKNOWN",
        "BROKEN_RELEASE_AMBIGUOUS=1 OWNERS=2 FAULTS=0",
        verifies=False,
        violates="creates<=1",
    ),
    Variant(
        "broken-stale-takeover",
        "an expired claim is taken over instead of turned UNKNOWN",
        "BROKEN_STALE_TAKEOVER=1 OWNERS=2 FAULTS=0",
        verifies=False,
        violates="creates<=1",
    ),
    Variant(
        "broken-no-merge",
        "back from local mode without merging the outage records",
        "FIXED=1 BROKEN_NO_MERGE=1 OUTAGE=1 LOCAL_MODE=1 SPREAD=0 OWNERS=2 FAULTS=0",
        verifies=False,
        violates="creates<=1",
    ),
    Variant(
        "broken-merge-no-wait",
        "the merge does not wait for local sends that may still be sending",
        "FIXED=1 BROKEN_MERGE_NO_WAIT=1 OUTAGE=1 LOCAL_MODE=1 SPREAD=0 OWNERS=2 FAULTS=0",
        verifies=False,
        violates="nsending==0|creates<=1",
    ),
]
BY_NAME = {variant.name: variant for variant in VARIANTS}


@dataclass
class Result:
    variant: Variant
    errors: int = -1
    states: int = 0
    depth: int = 0
    seconds: float = 0.0
    complete: bool = False  # neither the depth limit nor the memory limit was hit
    late_reached: bool = False  # every statement of the final check was reached
    failed_assertion: str = ""
    trail: list[str] = field(default_factory=list)
    output: str = ""


def missing_tools() -> list[str]:
    return [tool for tool in ("spin", "gcc") if shutil.which(tool) is None]


def _run(args: list[str], cwd: Path, timeout: float = 120) -> str:
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0 and args[0] != "./pan":
        raise RuntimeError(f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout + done.stderr


def check(variant: Variant, workdir: Path, *, bfs: bool = False) -> Result:
    """Generate, compile and run the verifier for one variant; replay a trail if any."""
    workdir.mkdir(parents=True, exist_ok=True)
    shutil.copy(MODEL, workdir / "claim.pml")
    defines = [f"-D{setting}" for setting in variant.defines.split()]
    started = time.perf_counter()
    _run(["spin", "-a", *defines, "claim.pml"], workdir)
    # -O0: the verifier is compiled for every variant; optimising costs more than it saves
    cflags = ["-O0", "-DSAFETY", f"-DMEMLIM={PAN_MEMORY_MB}", "-DNOBOUNDCHECK"]
    _run(["gcc", *cflags, *(["-DBFS"] if bfs else []), "-o", "pan", "pan.c"], workdir)
    out = _run(["./pan", f"-m{PAN_DEPTH}", f"-w{PAN_HASH}"], workdir, timeout=PAN_TIMEOUT)
    result = Result(variant, seconds=time.perf_counter() - started, output=out)
    if found := re.search(r"errors: (\d+)", out):
        result.errors = int(found[1])
    if found := re.search(r"(\d+) states, stored", out):
        result.states = int(found[1])
    if found := re.search(r"depth reached (\d+)", out):
        result.depth = int(found[1])
    result.complete = "max search depth too small" not in out and "out of memory" not in out
    result.late_reached = (
        re.search(r"unreached in proctype Late\n\s+\(0 of \d+ states\)", out) is not None
    )
    if result.errors > 0 and (workdir / "claim.pml.trail").exists():
        replay = _run(["spin", "-t", *defines, "claim.pml"], workdir)
        result.trail = [
            line.strip().removeprefix("EV ").strip()
            for line in replay.splitlines()
            if line.strip().startswith("EV ")
        ]
        if found := re.search(r"text of failed assertion: assert\((.*)\)", replay):
            result.failed_assertion = found[1]
    return result


def check_all(variants: list[Variant], root: Path, *, bfs: bool = False) -> dict[str, Result]:
    # the largest first, so that two workers finish together
    order = sorted(variants, key=lambda variant: not variant.verifies)
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        futures = {v.name: pool.submit(check, v, root / v.name, bfs=bfs) for v in order}
        return {name: future.result() for name, future in futures.items()}


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Result]:
    missing = missing_tools()
    if missing:
        message = (
            f"{' and '.join(missing)} not installed: the protocol model cannot be checked "
            "(scripts/test installs the Debian package `spin`; or apt-get install spin gcc)"
        )
        if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    return check_all(VARIANTS, tmp_path_factory.mktemp("model"))


def _describe(result: Result) -> str:
    trail = "\n    ".join(result.trail)
    return (
        f"{result.variant.name}: errors={result.errors} states={result.states} "
        f"depth={result.depth} failed={result.failed_assertion!r}\n    {trail}\n"
        f"{result.output[-3000:]}"
    )


@pytest.mark.slow
@pytest.mark.parametrize("name", [v.name for v in VARIANTS if v.verifies])
def test_model_verifies(results: dict[str, Result], name: str) -> None:
    result = results[name]
    assert result.errors == 0, _describe(result)
    assert result.complete, _describe(result)
    assert result.states > 1000, _describe(result)
    assert result.late_reached, f"the final check was not reached: {_describe(result)}"


@pytest.mark.slow
@pytest.mark.parametrize("name", [v.name for v in VARIANTS if not v.verifies])
def test_model_rejects(results: dict[str, Result], name: str) -> None:
    result = results[name]
    assert result.errors > 0, _describe(result)
    assert result.trail, f"no trail to replay: {_describe(result)}"
    expected = result.variant.violates.split("|")
    assert any(text in result.failed_assertion for text in expected), _describe(result)


def test_variants_name_known_macros() -> None:
    """A misspelt -D would silently check the default model."""
    source = MODEL.read_text()
    for variant in VARIANTS:
        for setting in variant.defines.split():
            key, _, value = setting.partition("=")
            assert value.isdigit(), f"{variant.name}: {setting}"
            assert f"#ifndef {key}\n" in source, f"{variant.name}: {key} is not a model setting"


def main(argv: list[str]) -> int:
    bfs = "--bfs" in argv
    names = [arg for arg in argv if not arg.startswith("--")]
    unknown = [name for name in names if name not in BY_NAME]
    if unknown or missing_tools():
        print(f"unknown variants {unknown}" if unknown else f"missing: {missing_tools()}")
        print("variants:", ", ".join(BY_NAME))
        return 2
    chosen = [BY_NAME[name] for name in names] if names else VARIANTS
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sendguard-model-") as root:
        done = check_all(chosen, Path(root), bfs=bfs)
    failures = 0
    for variant in chosen:
        result = done[variant.name]
        ok = (result.errors == 0 and result.complete) if variant.verifies else result.errors > 0
        failures += not ok
        verdict = ("verified" if result.errors == 0 else "REJECTED") + (
            "" if ok else " (unexpected)"
        )
        print(f"{variant.name:38} {verdict:22} {result.states:>9} states  depth {result.depth:>5}"
              f"  {result.seconds:5.1f} s")  # fmt: skip
        if result.errors:
            print(f"    assertion violated: {result.failed_assertion}")
            for line in result.trail:
                print(f"      {line}")
    print(f"{len(chosen)} variants in {time.perf_counter() - started:.1f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
