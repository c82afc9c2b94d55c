"""PostgreSQL: connection pool, migrations and the repositories that own each table."""
