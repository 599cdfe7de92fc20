"""The chaos harness: real worker processes killed -9 and a PostgreSQL restart under load,
then a checker (``python -m tests.chaos``, ``make chaos``; a small run in the suite)."""
