"""Message ingestion and live delivery: the code behind the five entry modules at the top level.

One folder per process, over shared layers; a process folder never imports
another process folder, and a layer never imports a layer above it (the
contracts in ``pyproject.toml``, checked by import-linter in the test run)::

    ingestion/   the ingestion API (POST /dummy)      entry: ingestion_api.py
    listing/     the list API (GET /messages) + page  entry: list_api.py
    worker/      the Celery worker that stores         entry: tasks.py
    live/        the websocket server                  entry: wsserver.py
    ---------------------------------------------------------------------
    web/         HTTP plumbing of the two APIs: errors, tokens, rate limits, OpenAPI
    ---------------------------------------------------------------------
    broker.py    the queue contract: task messages, pending set, dead letters
    storage.py   the database: models, idempotent saves, keyset listing   entry: db.py
    metrics.py   Prometheus exposition
    ---------------------------------------------------------------------
    records.py   what a message is: validation, ids, timestamps, frames
    settings.py  every setting, declared once
    logs.py      JSON log lines
"""
