"""A deliberately straightforward version of the seed, the yardstick of ``scripts/bench.py cost --baseline``.

Never part of the product. It is what the design describes written the
obvious way, so the cost benchmark can say what our persistence path costs
*relative* to it on the same machine, Redis and database, in the same run:

* ``create_app()``: Flask, ``POST /dummy`` parses the JSON body and calls
  ``persist.delay(...)`` (Celery's own publish, per request), answers 202;
* ``persist``: a Celery task that INSERTs its one message, one transaction
  per task, into its own table ``baseline_messages`` (created on first use);
* ``create_floor_app()``: a Flask handler that only parses the JSON body and
  answers 202, the floor of any request path on this machine.

Run from this directory (``scripts/``) so gunicorn does not load the
project's ``gunicorn.conf.py``: ``gunicorn -w 2 "baseline:create_app()"``
and ``celery -A baseline worker -Q baseline``. Reads ``REDIS_URL`` and
``SQLALCHEMY_DATABASE_URI`` from the environment.
"""

from __future__ import annotations

import datetime as dt
import os
import uuid

import sqlalchemy as sa
from celery import Celery
from flask import Flask, jsonify, request
from sqlalchemy.dialects import mysql

QUEUE = "baseline"
celery_app = Celery("baseline", broker=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
celery_app.conf.update(task_default_queue=QUEUE, task_ignore_result=True, broker_connection_retry_on_startup=True)

metadata = sa.MetaData()
TIME = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")  # microseconds on MariaDB too
TABLE = sa.Table(
    "baseline_messages",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("received_at", TIME, nullable=False),
    sa.Column("persisted_at", TIME, nullable=False),
)
_engine: sa.Engine | None = None


def engine() -> sa.Engine:
    """This process's engine (made after the fork), with the table created on first use."""
    global _engine
    if _engine is None:
        _engine = sa.create_engine(os.environ["SQLALCHEMY_DATABASE_URI"])
        metadata.create_all(_engine)
    return _engine


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


@celery_app.task(name="baseline.persist")
def persist(message_id: str, payload: str, received_at: str) -> None:
    """Store one message: one INSERT, one transaction."""
    row = {
        "id": message_id,
        "payload": payload,
        "received_at": dt.datetime.fromisoformat(received_at),
        "persisted_at": now(),
    }
    with engine().begin() as conn:
        conn.execute(TABLE.insert(), row)


def create_app() -> Flask:
    app = Flask(__name__)

    @app.post("/dummy")
    def post_message():
        payload = request.get_json()
        message_id = str(uuid.uuid4())
        received_at = now().isoformat()
        persist.delay(message_id, request.get_data(as_text=True), received_at)
        return jsonify(id=message_id, received_at=received_at, keys=len(payload)), 202

    return app


def create_floor_app() -> Flask:
    app = Flask(__name__)

    @app.post("/dummy")
    def post_message():
        payload = request.get_json()
        return jsonify(id=str(uuid.uuid4()), keys=len(payload)), 202

    return app
