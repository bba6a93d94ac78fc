"""The Sphinx documentation builds with warnings as errors, and stays in step with the code."""

from __future__ import annotations

import html
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from relay.settings import ENV_VARS, markdown_table
from tests.helpers import ROOT

DOCS = ROOT / "docs"
PAGES = ("index", "design", "architecture", "api", "configuration", "running", "operations", "scaling", "performance")


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


def test_committed_settings_table_is_the_one_the_code_generates() -> None:
    """docs/configuration.md holds the table as Markdown (read on a code host), regenerated here and compared."""
    result = subprocess.run(
        [sys.executable, "scripts/settings_table.py", "--check"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    page = (DOCS / "configuration.md").read_text()
    assert f"\n{markdown_table()}\n" in page
    assert "{env-vars}" not in page, "the table needs no Sphinx build to be read"


def test_settings_table_check_fails_when_the_committed_copy_differs(tmp_path: Path) -> None:
    """A stale copy (a setting added, its meaning changed) is caught, and the fix is named."""
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    shutil.copy(ROOT / "scripts" / "settings_table.py", scripts)
    (tmp_path / "docs").mkdir()
    (tmp_path / "relay").symlink_to(ROOT / "relay")
    page = (DOCS / "configuration.md").read_text()
    (tmp_path / "docs" / "configuration.md").write_text(page.replace("| `WS_PORT` |", "| `WS_PORTS` |"))
    check = [sys.executable, str(scripts / "settings_table.py"), "--check"]
    stale = subprocess.run(check, capture_output=True, text=True, timeout=60)
    assert stale.returncode == 1
    assert stale.stderr.strip() == "docs/configuration.md is out of date: run python scripts/settings_table.py"
    subprocess.run([sys.executable, str(scripts / "settings_table.py")], check=True, timeout=60)
    assert (tmp_path / "docs" / "configuration.md").read_text() == page


def test_readme_first_screen_is_the_two_commands_then_a_publish_list_and_listen() -> None:
    """A newcomer acts on the first screen: run and test, then curl to publish and list, a websocket, the page."""
    readme = (ROOT / "README.md").read_text()
    first_block = readme.split("```bash\n", 1)[1].split("```", 1)[0]
    assert [line.split()[0] for line in first_block.splitlines()] == ["scripts/run.sh", "scripts/test.sh"]
    assert readme.index("```bash\n") < readme.index("\n## "), "the two commands come before any section"
    screen = "\n".join(readme.splitlines()[:50])
    ports = {name: ENV_VARS[name].default for name in ("INGESTION_API_PORT", "LIST_API_PORT", "WS_PORT")}
    publish = re.search(
        r"^\$ curl .*-d '(\{.*\})'.*\n\s+http://127\.0\.0\.1:(\d+)/channels/(\w+)/messages$", screen, re.M
    )
    assert publish, "a curl that publishes"
    assert publish[2] == ports["INGESTION_API_PORT"]
    channel = publish[3]
    assert re.search(
        rf"^\$ curl .*http://127\.0\.0\.1:{ports['LIST_API_PORT']}/channels/{channel}/messages$", screen, re.M
    )
    assert f"-m websockets 'ws://127.0.0.1:{ports['WS_PORT']}/?channel={channel}'" in screen
    assert f"<http://127.0.0.1:{ports['LIST_API_PORT']}/" in screen, "the live page"
    assert '"payload":' + publish[1].replace(": ", ":").replace(", ", ",") in screen, "the output shows the message"


def test_readme_links_resolve_and_say_how_to_start_flower() -> None:
    readme = (ROOT / "README.md").read_text()
    for target in re.findall(r"\]\(((?:docs/)?[\w./-]+?)(?:#[\w-]+)?\)", readme):
        assert (ROOT / target).exists(), f"README links to {target}, which does not exist"
    [flower] = [line for line in readme.splitlines() if "celery -A tasks flower" in line]
    assert "FLOWER_UNAUTHENTICATED_API=true" in flower, "Flower's API answers 401 without it"


def test_every_compose_variable_is_documented() -> None:
    compose = (ROOT / "docker-compose.yml").read_text()
    used = set(re.findall(r"(?<!\$)\$\{(\w+)", compose))
    assert {"SECRET_KEY", "MYSQL_PASSWORD"} <= used
    section = (DOCS / "configuration.md").read_text().split("## Variables of the compose stack", 1)[1]
    section = section.split("\n## ", 1)[0]  # not the settings table above it, which names SECRET_KEY too
    documented = set(re.findall(r"^\| `(\w+)` \|", section, flags=re.MULTILINE))
    assert used <= documented, f"document {sorted(used - documented)} in docs/configuration.md"
