#!/usr/bin/env bash
# Run lint and the whole test suite in .venv (created on first use).
# MariaDB tests run when TEST_MYSQL_URL is set (CI sets it); extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/venv.sh requirements-dev.txt
ruff check .
ruff format --check .
exec python -m pytest "$@"
