"""Which failed writes are about the records written, and which about the database.

The worker dead-letters a record only when the database rejects that record
(``relay/worker/persistence.py``); every other failure is an outage it waits
out. :func:`about_the_record` tells the two apart from the driver's own error
code, as the database reported it:

* about the record: a constraint or a trigger refused a row (SQLite's
  ``SQLITE_CONSTRAINT_*``, MariaDB/MySQL 1062 duplicate, 1048 null, 4025/3819
  check constraint, 1644 a trigger's ``SIGNAL``, foreign keys), or a value
  does not fit its column (SQLite ``SQLITE_TOOBIG``/``SQLITE_MISMATCH``;
  MariaDB 1366 bad string, 1406 too long, 1264/1690 out of range, 1292
  bad value, 1153 a row over ``max_allowed_packet``...);
* about the database, whatever the record: it cannot write (SQLite
  ``SQLITE_FULL``, ``SQLITE_READONLY``, ``SQLITE_IOERR``, ``SQLITE_CANTOPEN``;
  MariaDB 1021 disk full, 1114 table full, 1290/1836 read-only, 1142 no
  privilege), is busy (``SQLITE_BUSY``/``SQLITE_LOCKED``, 1205 lock wait,
  1213 deadlock) or is gone (2006, 2013, a pool timeout);
* anything else, known or not, counts as the database's. Mistaking the
  database's trouble for the records' dead-letters every record that meets it
  (issue 27: 5,318 of 5,936 in 45 s on a full disk) and needs an operator's
  replay; mistaking one record's trouble for the database's holds that
  record's batch, with a warning each attempt, until the cause is fixed, and
  loses nothing. Records reach the worker as the ingestion API built them,
  so an exception raised before the database sees them (a ``KeyError``, a
  ``RuntimeError``) is a bug or a misconfiguration of ours, not the record's.

No settings, no connection: a pure function of the exception, tested with
real driver errors in ``tests/test_db_errors.py``.
"""

from __future__ import annotations

import sqlalchemy as sa

# SQLite primary result codes (``sqlite_errorname`` without its extended suffix) that mean this row.
_SQLITE_RECORD_CODES = frozenset({"SQLITE_CONSTRAINT", "SQLITE_TOOBIG", "SQLITE_MISMATCH"})

# MariaDB/MySQL error numbers that mean this row (the server's ``ER_*`` codes).
_MYSQL_RECORD_ERRNOS = frozenset(
    {
        1048,  # ER_BAD_NULL_ERROR: column cannot be null
        1062,  # ER_DUP_ENTRY
        1118,  # ER_TOO_BIG_ROWSIZE
        1153,  # ER_NET_PACKET_TOO_LARGE: a statement over max_allowed_packet
        1216, 1217, 1451, 1452,  # foreign keys
        1264,  # ER_WARN_DATA_OUT_OF_RANGE
        1265,  # WARN_DATA_TRUNCATED
        1292,  # ER_TRUNCATED_WRONG_VALUE: incorrect datetime or number
        1300,  # ER_INVALID_CHARACTER_STRING
        1366,  # ER_TRUNCATED_WRONG_VALUE_FOR_FIELD: incorrect string value
        1367,  # ER_ILLEGAL_VALUE_FOR_TYPE
        1406,  # ER_DATA_TOO_LONG
        1411,  # ER_WRONG_VALUE_FOR_TYPE
        1586,  # ER_DUP_ENTRY_WITH_KEY_NAME
        1644,  # ER_SIGNAL_EXCEPTION: a trigger's SIGNAL SQLSTATE '45000'
        1690,  # ER_DATA_OUT_OF_RANGE
        3819,  # MySQL's ER_CHECK_CONSTRAINT_VIOLATED
        4025,  # MariaDB's ER_CONSTRAINT_FAILED: a CHECK constraint
    }
)  # fmt: skip


def about_the_record(error: BaseException) -> bool:
    """Tell whether a failed write failed because of the records written (True) or the database (False)."""
    if isinstance(error, sa.exc.StatementError) and error.orig is not None:
        if isinstance(error, sa.exc.DBAPIError) and error.connection_invalidated:
            return False  # a lost connection, whatever the driver called it
        error = error.orig
    if isinstance(error, sa.exc.SQLAlchemyError):
        return False  # a pool timeout, a disconnection: nothing reached the database
    name = getattr(error, "sqlite_errorname", None)
    if isinstance(name, str):
        return "_".join(name.split("_")[:2]) in _SQLITE_RECORD_CODES  # SQLITE_CONSTRAINT_TRIGGER: CONSTRAINT
    errno = error.args[0] if error.args else None
    if _is_mysql_error(error) and isinstance(errno, int):
        return errno in _MYSQL_RECORD_ERRNOS
    # Another driver: go by the DB-API class, which says "this row" for these two alone.
    return type(error).__name__ in {"IntegrityError", "DataError"}


def _is_mysql_error(error: BaseException) -> bool:
    return type(error).__module__.split(".")[0] in {"pymysql", "MySQLdb", "mysql", "mariadb"}
