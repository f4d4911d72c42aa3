"""Revert a fix, and show that the property test's kept interleavings find the defect again.

    scripts/refind                 # every fix below, one reverted tree each
    scripts/refind no-merge        # one of them

For each named fix: a copy of the committed tree (`git archive HEAD`) with that one fix undone
by a textual edit, then `test_an_interleaving_it_found_stays_fixed` (the shrunk scripts the
state machine printed, tests/e2e/test_property_interleavings.py) run against the copy. The fix
counts as guarded when exactly its own script fails there (and all of them pass on the real
tree, which CI checks). An edit that no longer applies means the code moved: update it here.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEST = "tests/e2e/test_property_interleavings.py"

Edit = tuple[str, str, str]  # file, text as it is, text with the fix undone

# fix reverted -> (the kept script that must fail, the edits that undo the fix)
REVERSALS: dict[str, tuple[str, list[Edit]]] = {
    # An upstream timeout is ambiguous: UNKNOWN, never released (proxy/guard/outcome.py).
    "release-on-timeout": ("timeout-is-unknown", [(
        "proxy/guard/outcome.py",
        'StoreAction.MARK_UNKNOWN, ClientAnswer.TIMED_OUT, "upstream-timeout"',
        'StoreAction.RELEASE, ClientAnswer.TIMED_OUT, "upstream-timeout"',
    )]),
    # The answer is read whole, not as far as it happens to be buffered.
    "partial-body": ("chunked-answer-read-whole", [(
        "proxy/upstream/client.py",
        "        while chunk := await response.content.read(_READ_CHUNK):",
        "        for chunk in [response.content.read_nowait()]:",
    )]),
    # An answer cut mid-body may have created the message: not "not sent".
    "cut-body-not-sent": ("short-answer-is-ambiguous", [(
        "proxy/upstream/client.py",
        "    # A malformed answer (status line, headers, chunk framing) is no answer either.\n",
        "    except aiohttp.ClientPayloadError as exc:\n"
        "        raise NotSent(type(exc).__name__) from exc\n",
    )]),
    # One failed store command is not an outage: only the prober switches modes.
    "flip-on-store-error": ("store-error-is-not-an-outage", [
        (
            "proxy/server/settling.py",
            "        self.metrics.store_errors.labels(step).inc()\n        log.error(STORE_ERROR",
            "        self.metrics.store_errors.labels(step).inc()\n"
            "        if getattr(self, 'on_store_error', None): self.on_store_error()\n"
            "        log.error(STORE_ERROR",
        ),
        (
            "proxy/server/app.py",
            "    prober.start()\n",
            "    prober.start()\n    shared_guard._settler.on_store_error = lambda: "
            "asyncio.ensure_future(failover.store_changed(False))\n",
        ),
    ]),
    # `local` merges its outage records into the shared store before guarding there again.
    "no-merge": ("outage-records-merged", [(
        "proxy/server/gate.py",
        "async def merge_outage_records(local: SendStore, shared: SendStore) -> int:\n",
        "async def merge_outage_records(local: SendStore, shared: SendStore) -> int:\n"
        "    return 0\n",
    )]),
}  # fmt: skip


def reverted_tree(into: Path, edits: list[Edit]) -> None:
    archive = subprocess.run(["git", "archive", "HEAD"], cwd=ROOT, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    for name, before, after in edits:
        path = into / name
        text = path.read_text()
        if text.count(before) != 1:
            raise SystemExit(
                f"refind: the edit of {name} no longer applies: update scripts/refind.py"
            )
        path.write_text(text.replace(before, after))


def failing_scripts(tree: Path) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-m", "pytest", TEST, "-q", "-p", "no:cacheprovider", "-rf",
         "-k", "stays_fixed"],
        cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True, text=True,
    )  # fmt: skip
    prefix = "FAILED " + TEST + "::test_an_interleaving_it_found_stays_fixed["
    return {
        line[len(prefix) :].split("]", 1)[0]
        for line in done.stdout.splitlines()
        if line.startswith(prefix)
    }


def main(names: list[str]) -> int:
    unknown = [name for name in names if name not in REVERSALS]
    if unknown:
        print(f"refind: unknown fix {unknown}; known: {', '.join(REVERSALS)}", file=sys.stderr)
        return 2
    status = 0
    for name in names or list(REVERSALS):
        script, edits = REVERSALS[name]
        with tempfile.TemporaryDirectory(prefix=f"sendguard-refind-{name}-") as tmp:
            reverted_tree(Path(tmp), edits)
            failed = failing_scripts(Path(tmp))
        found = failed == {script}
        status |= not found
        verdict = "found again" if found else "NOT FOUND"
        print(f"{name:22} {verdict:12} failing: {', '.join(sorted(failed)) or 'none'}")
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
