"""The results schema's Alembic migrations, shipped in the package (see worker/db/migrate.py)."""
