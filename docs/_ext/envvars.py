"""Sphinx extension: the ``env-vars`` directive renders ``relay.settings.ENV_VARS`` as a table.

Use it in Markdown as ```` ```{env-vars} ``` ```` or in reST as
``.. env-vars::``. The table is built from the fields of ``relay.settings.Settings``
at build time, so the documented variables, defaults and meanings are always
the code's (``python -m relay.settings`` prints the same table in a terminal).
"""

from __future__ import annotations

import re
from typing import Any

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective

from relay import settings as config

_CODE = re.compile(r"`([^`]+)`")


def _inline(text: str) -> nodes.paragraph:
    """A paragraph where `backticked` spans (as the help texts use them) become literals."""
    paragraph = nodes.paragraph()
    for index, part in enumerate(_CODE.split(text)):
        if part:
            paragraph += nodes.literal(part, part) if index % 2 else nodes.Text(part)
    return paragraph


def _row(cells: list[nodes.Node]) -> nodes.row:
    row = nodes.row()
    for cell in cells:
        entry = nodes.entry()
        entry += cell
        row += entry
    return row


def _literal(text: str) -> nodes.paragraph:
    paragraph = nodes.paragraph()
    if text:
        paragraph += nodes.literal(text, text)
    return paragraph


class EnvVarsTable(SphinxDirective):
    """Render every variable of ``relay.settings.ENV_VARS``: name, default, required in production, meaning."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        self.env.note_dependency(config.__file__)
        headers = ("variable", "default", "required", "meaning")
        group = nodes.tgroup(cols=len(headers))
        for width in (22, 22, 8, 48):
            group += nodes.colspec(colwidth=width)
        head = nodes.thead()
        head += _row([nodes.paragraph(text=title) for title in headers])
        group += head
        body = nodes.tbody()
        for name, var in config.ENV_VARS.items():
            required = nodes.paragraph(text="yes" if var.required_in_production else "")
            body += _row([_literal(name), _literal(config.shown_default(var)), required, _inline(var.help)])
        group += body
        table = nodes.table(classes=["env-vars", "colwidths-given"], width="100%")
        table += group
        return [table]


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("env-vars", EnvVarsTable)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
