"""Query parameters declared once: the view parses with them, the OpenAPI document describes them.

A :class:`Query` is the list of parameters an operation takes. ``parse``
turns ``request.args`` into values or raises the 400 :class:`ApiError` the
API documents (``unknown_parameter``, or the parameter's own code such as
``bad_limit``); ``openapi`` returns the same parameters as OpenAPI objects,
so a limit, default or choice is written in one place and the document
cannot drift from what the view accepts.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from relay.web.base import ApiError


@dataclass(frozen=True)
class Integer:
    """A whole number from ``minimum`` to ``maximum``, written in ASCII digits."""

    name: str
    description: str
    code: str
    minimum: int
    maximum: int
    default: int | None

    def parse(self, raw: str) -> int:
        # ASCII digits only: str.isdigit() also accepts "²", which int() rejects.
        digits = len(str(self.maximum))
        if not re.fullmatch(f"[0-9]{{1,{digits}}}", raw) or not self.minimum <= int(raw) <= self.maximum:
            raise ApiError(400, self.code, f"{self.name} must be an integer from {self.minimum} to {self.maximum}.")
        return int(raw)

    def schema(self) -> dict[str, Any]:
        schema = {"type": "integer", "minimum": self.minimum, "maximum": self.maximum}
        return schema if self.default is None else {**schema, "default": self.default}


@dataclass(frozen=True)
class Choice:
    """One of a few fixed strings."""

    name: str
    description: str
    code: str
    choices: tuple[str, ...]
    default: str

    def parse(self, raw: str) -> str:
        if raw not in self.choices:
            raise ApiError(400, self.code, f"{self.name} must be {' or '.join(map(repr, self.choices))}.")
        return raw

    def schema(self) -> dict[str, Any]:
        return {"type": "string", "enum": list(self.choices), "default": self.default}


@dataclass(frozen=True)
class Text:
    """A string the view checks itself (an opaque cursor); absent means None."""

    name: str
    description: str
    default: None = None

    def parse(self, raw: str) -> str:
        return raw

    def schema(self) -> dict[str, Any]:
        return {"type": "string", "minLength": 1}


Param = Integer | Choice | Text


class Query:
    """The query parameters of one operation; any other parameter is a 400 ``unknown_parameter``."""

    def __init__(self, *params: Param) -> None:
        self.params = {param.name: param for param in params}

    def parse(self, args: Mapping[str, str]) -> dict[str, Any]:
        """Return every parameter's value (its default when absent), or raise the documented 400."""
        unknown = set(args) - set(self.params)
        if unknown:
            raise ApiError(400, "unknown_parameter", f"Unknown query parameter(s): {', '.join(sorted(unknown))}.")
        return {
            name: param.default if args.get(name) is None else param.parse(args[name])
            for name, param in self.params.items()
        }

    def codes(self) -> list[str]:
        """The error codes a bad query gets, for the operation's 400 description."""
        return [p.code for p in self.params.values() if not isinstance(p, Text)] + ["unknown_parameter"]

    def openapi(self) -> list[dict[str, Any]]:
        """The parameters as OpenAPI parameter objects."""
        return [
            {"name": p.name, "in": "query", "description": p.description, "schema": p.schema()}
            for p in self.params.values()
        ]
