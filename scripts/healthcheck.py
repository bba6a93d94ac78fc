"""Container health check: exit 0 when a URL answers 200, 1 otherwise.

The Docker image's ``HEALTHCHECK`` and the compose services run it against
their own ``/healthz`` (standard library only, so it starts fast)::

    python scripts/healthcheck.py http://127.0.0.1:5000/healthz
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request


def healthy(url: str, timeout: float = 3.0) -> bool:
    """Tell whether ``GET url`` answers 200 within ``timeout`` seconds."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (our own URL)
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} URL")
    sys.exit(0 if healthy(sys.argv[1]) else 1)
