"""Where the test suite finds the linters it runs as programs (checkov, actionlint): the
``.venv-tools`` virtualenv that ``make tools`` builds (``AADS_TOOLS_BIN`` overrides it)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import ROOT

TOOLS_BIN = Path(os.environ.get("AADS_TOOLS_BIN", ROOT / ".venv-tools" / "bin"))


def tool(name: str) -> str:
    """The tool's path, or skip the test saying how to install it."""
    found = TOOLS_BIN / name
    if found.is_file() and os.access(found, os.X_OK):
        return str(found)
    on_path = shutil.which(name)
    if on_path:
        return on_path
    pytest.skip(f"{name} is not installed: run `make tools` (it builds {TOOLS_BIN.parent})")
