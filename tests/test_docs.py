"""The Sphinx documentation builds with warnings as errors, and stays in step with the code."""

from __future__ import annotations

import html
import re
import subprocess
import sys
from pathlib import Path

import pytest

from relay.settings import ENV_VARS
from tests.helpers import ROOT

DOCS = ROOT / "docs"
PAGES = ("index", "design", "api", "configuration", "operations", "scaling", "performance")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build the HTML docs once, as CI would, with every warning an error."""
    out = tmp_path_factory.mktemp("docs-html")
    doctrees = tmp_path_factory.mktemp("docs-doctrees")
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-b", "html", "-d", str(doctrees), str(DOCS), str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, f"sphinx-build failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    assert "WARNING" not in result.stderr, result.stderr
    return out


def page_text(built: Path, name: str) -> str:
    text = re.sub(r"<[^>]+>", " ", (built / f"{name}.html").read_text())
    return html.unescape(re.sub(r"\s+", " ", text))


def test_docs_build_without_warnings(built: Path) -> None:
    for name in PAGES:
        assert (built / f"{name}.html").is_file(), f"{name} was not built"


def test_every_page_is_in_the_toctree() -> None:
    index = (DOCS / "index.rst").read_text()
    toctree = index.split(".. toctree::", 1)[1].split("\n\n\n", 1)[0]
    listed = set(re.findall(r"^   (\w+)$", toctree, flags=re.MULTILINE))
    sources = {path.stem for path in DOCS.glob("*") if path.suffix in (".md", ".rst")} - {"index"}
    assert listed == sources
    assert set(PAGES) - {"index"} <= listed


def test_configuration_page_is_generated_from_config(built: Path) -> None:
    text = page_text(built, "configuration")
    table = text.split("Settings the services read", 1)[1].split("Variables of the compose stack", 1)[0]
    squeezed = re.sub(r"\s", "", table)
    for name, var in ENV_VARS.items():
        assert name in table, f"{name} is missing from the generated table"
        assert re.sub(r"[\s`]", "", var.help) in squeezed, f"the meaning of {name} is not the code's"
    assert str(ROOT) not in table, "the table shows this checkout's path"


def test_every_compose_variable_is_documented() -> None:
    compose = (ROOT / "docker-compose.yml").read_text()
    used = set(re.findall(r"(?<!\$)\$\{(\w+)", compose))
    assert {"SECRET_KEY", "MYSQL_PASSWORD"} <= used
    documented = set(re.findall(r"^\| `(\w+)` \|", (DOCS / "configuration.md").read_text(), flags=re.MULTILINE))
    assert used <= documented, f"document {sorted(used - documented)} in docs/configuration.md"
