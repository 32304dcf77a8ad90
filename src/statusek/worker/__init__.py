"""The worker: consumes commands and queries, applies them in Postgres, publishes notifications."""
