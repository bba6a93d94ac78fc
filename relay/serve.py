"""Each process's command line, in one place: ``python -m relay.serve PROCESS [ARG...]``.

The Procfile (``scripts/run.sh``), ``docker-compose.yml``, the Dockerfile and
the tests all start the services through this module, so a flag is written
once, here, and its value comes from the settings (``relay/settings.py``): the
bind address and ports, ``WEB_WORKERS``, ``FORWARDED_ALLOW_IPS``,
``PERSIST_QUEUE``, ``WORKER_CONCURRENCY``, ``WORKER_HOSTNAME``. Arguments after
the process name are appended (the tests add ``--without-mingle``, say).

The process replaces this one (``os.execv``), so signals, the pid and the exit
status are the service's own; it runs in the checkout (``PROJECT_DIR``), where
the entry modules and ``gunicorn.conf.py`` are. The commands are the design's entry points::

    ingestion_api  gunicorn "ingestion_api:create_app()"   (gunicorn.conf.py holds the rest)
    list_api       gunicorn "list_api:create_app()"
    worker         celery -A tasks worker -Q persist
    wsserver       python wsserver.py
    migrate        flask --app db db upgrade
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from relay.settings import PROJECT_DIR, Settings, load_settings

PROCESSES = ("ingestion_api", "list_api", "worker", "wsserver", "migrate")


def command(process: str, settings: Settings) -> list[str]:
    """The command line that runs ``process`` with ``settings`` (raises ``ValueError`` for another name)."""
    python = [sys.executable, "-m"]
    if process in ("ingestion_api", "list_api"):
        port = settings.ingestion_api_port if process == "ingestion_api" else settings.list_api_port
        return [
            *python, "gunicorn", "--bind", f"{settings.bind_host}:{port}", "--workers", str(settings.web_workers),
            "--forwarded-allow-ips", settings.forwarded_allow_ips, f"{process}:create_app()",
        ]  # fmt: skip
    if process == "worker":
        return [
            *python, "celery", "-A", "tasks", "worker", "-Q", settings.persist_queue,
            "--hostname", settings.worker_hostname, "--concurrency", str(settings.worker_concurrency),
            "--loglevel", "INFO",
        ]  # fmt: skip
    if process == "wsserver":
        return [sys.executable, "wsserver.py"]
    if process == "migrate":
        return [*python, "flask", "--app", "db", "db", "upgrade"]
    raise ValueError(f"unknown process {process!r}: one of {', '.join(PROCESSES)}")


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in PROCESSES:
        sys.exit(f"usage: python -m relay.serve {{{','.join(PROCESSES)}}} [ARG...]")
    try:
        settings = load_settings()
    except ValueError as exc:  # one line, as the services themselves say it
        sys.exit(f"relay.serve: {exc}")
    line = command(args[0], settings) + args[1:]
    os.chdir(PROJECT_DIR)  # the entry modules and gunicorn.conf.py are found there, wherever this was started
    os.execv(line[0], line)


if __name__ == "__main__":
    main()
