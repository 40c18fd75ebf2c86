"""Alembic migration scripts (``mainsail migrate`` runs them)."""
