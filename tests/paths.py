"""Where things are, for every test tier: the repository root and the directories under it."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
NODE_DIR = REPO_ROOT / "tests" / "node"  # the Node SDK recipe and its pinned packages
SHARED_DIR = REPO_ROOT.parent / "shared"  # the read-only contract beside the repo (CI has it)
