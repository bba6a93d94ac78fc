#!/usr/bin/env bash
# Run lint and the whole test suite in .venv (created on first use).
# MariaDB tests run when TEST_MYSQL_URL is set (CI sets it); extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/venv.sh requirements-dev.txt
ruff check .
ruff format --check .
# Two pytest-xdist workers, each taking whole test files (a file's tests keep their order and
# fixtures): the long tests wait on processes, containers and a browser more than they compute,
# so two at a time nearly halve the run. Pass -n 0 to run in one process (e.g. with -s to see the
# figures the tests print). The run's id names the folder where the workers claim free ports
# (tests/helpers.py); given here so the controller knows it too and removes it at the end.
exec python -m pytest -n 2 --dist loadfile --testrunuid "$(python -c 'import uuid; print(uuid.uuid4().hex)')" "$@"
