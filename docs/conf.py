"""Sphinx configuration for the project's documentation.

Build it with ``sphinx-build -W -b html docs docs/_build/html`` (the tests
do, with warnings as errors). Pages are reStructuredText or Markdown (MyST).
The configuration table is generated from ``relay.settings.Settings`` into
``configuration.md`` by ``scripts/settings_table.py`` and committed (it reads on a
code host too); ``tests/test_docs.py`` fails when it drifts from the code.
"""

from __future__ import annotations

project = "Message ingestion and live delivery"
author = "the project's contributors"
copyright = "the project's contributors"

extensions = ["myst_parser"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
myst_heading_anchors = 3
# Keep quotes as written: the pages quote code, headers and JSON.
smartquotes = False
html_theme = "alabaster"
html_static_path: list[str] = []
# Wide enough for the configuration table without a horizontal scroll bar.
html_theme_options = {"page_width": "1240px", "sidebar_width": "220px"}
