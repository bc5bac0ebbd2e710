"""Storage: SQLAlchemy 2 async engine, models, repositories and Alembic migrations."""
