"""Alembic environment: keyplane passes its own connection (store/db.py: migrate)."""

from alembic import context

from keyplane.store.models import Base
import keyplane.access.models
import keyplane.billing.models
import keyplane.identity.models
import keyplane.members.models
import keyplane.providers.models  # noqa: F401

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("keyplane migrations run through keyplane.store.db.migrate(), not the alembic CLI")
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
