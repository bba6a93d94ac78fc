"""The ingestion API process: validates a POST, queues it durably, publishes it live, answers 202."""
