"""Entry point of the migrations: ``flask --app db db upgrade`` (models in ``relay/storage.py``)."""

from relay.storage import create_app

__all__ = ["create_app"]
