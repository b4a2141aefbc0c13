"""Where things are: the repository, the scripts the tests run, and where artifacts go."""

from __future__ import annotations

import os
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent
ROOT = TESTS.parent
SCRIPTS = TESTS / "scripts"  # run as processes (server.py, device.py, ...) or imported by workers (-I channel_one)


def artifacts(fallback: Path) -> Path:
    """Where a test keeps what CI shows (screenshots): $MUTITASK_TEST_ARTIFACTS (.ci/run sets
    .ci/artifacts), else ``fallback``; made if missing."""
    folder = Path(os.environ.get("MUTITASK_TEST_ARTIFACTS") or fallback)
    folder.mkdir(parents=True, exist_ok=True)
    return folder
