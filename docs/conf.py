"""Sphinx configuration for the project's documentation.

Build it with ``sphinx-build -W -b html docs docs/_build/html`` (the tests
do, with warnings as errors). Pages are reStructuredText or Markdown (MyST).
The configuration table is generated from ``relay.settings.Settings`` at build time
by ``_ext/envvars.py``, so it cannot drift from the code.
"""

from __future__ import annotations

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path[:0] = [str(DOCS / "_ext"), str(DOCS.parent)]

project = "Message ingestion and live delivery"
author = "the project's contributors"
copyright = "the project's contributors"

extensions = ["myst_parser", "envvars"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "_ext", "Thumbs.db", ".DS_Store"]
myst_heading_anchors = 3
# Keep quotes as written: the pages quote code, headers and JSON.
smartquotes = False
html_theme = "alabaster"
html_static_path: list[str] = []
# Wide enough for the configuration table without a horizontal scroll bar.
html_theme_options = {"page_width": "1240px", "sidebar_width": "220px"}
