"""PostgreSQL: migrations and every SQL statement Herald runs, through asyncpg."""
