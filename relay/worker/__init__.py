"""The worker process: the Celery task that stores queued messages exactly once."""
