"""Storage: the schema, the database handle and the statements every backend shares."""
