"""Entry point of the list API: ``gunicorn "list_api:create_app()"`` (code in ``relay/listing``)."""

from relay.listing.app import create_app

__all__ = ["create_app"]
