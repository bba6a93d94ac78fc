"""The layout: process folders over shared layers, as the import contracts in pyproject.toml say.

import-linter checks the real import graph of the ``relay`` package, so a new
import from one process folder into another, or from a shared layer up into
a process, fails here.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.helpers import ROOT

LINT_IMPORTS = str(Path(sys.executable).parent / "lint-imports")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [LINT_IMPORTS, "--no-cache"], cwd=root, capture_output=True, text=True, timeout=120,
        env={"PATH": str(Path(sys.executable).parent), "PYTHONPATH": str(root)},
    )  # fmt: skip


def test_every_import_contract_is_kept() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 1 kept, 0 broken." in result.stdout, result.stdout


def test_a_process_importing_another_breaks_the_contracts(tmp_path: Path) -> None:
    """The contracts have teeth: the listing process importing the worker's code is reported."""
    shutil.copytree(ROOT / "relay", tmp_path / "relay")
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    app = tmp_path / "relay" / "listing" / "app.py"
    app.write_text(app.read_text() + "\nfrom relay.worker import persistence  # noqa\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert "relay.listing.app -> relay.worker.persistence" in result.stdout, result.stdout
