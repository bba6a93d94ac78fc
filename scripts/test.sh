#!/usr/bin/env bash
# Run lint and the whole test suite in .venv (created on first use).
# MariaDB tests run when TEST_MYSQL_URL is set (CI sets it); extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/venv.sh requirements-dev.txt
ruff check .
ruff format --check .
# One process: many tests time things on these two cores, and running two at once (pytest-xdist,
# installed: add -n 2 --dist loadfile for a faster local run) made some of them flaky.
exec python -m pytest "$@"
