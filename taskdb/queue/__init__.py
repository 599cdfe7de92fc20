"""The durable job queue: models, client, server, limiters."""
