"""Alembic environment of the inventory.

``Inventory.migrate`` runs it with an open connection in ``config.attributes["connection"]``,
already inside the transaction (and, on PostgreSQL, the advisory lock) that serialises
concurrent migrations. Run by hand (``alembic -c <ini>`` with ``script_location`` pointing here
and ``sqlalchemy.url`` set), it opens its own connection, or emits SQL in ``--sql`` mode.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine

from fleetops.inventory.models import Base

config = context.config
target_metadata = Base.metadata


def _run_with(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=True,  # SQLite ALTERs go through table copies in later migrations
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()
elif (connection := config.attributes.get("connection")) is not None:
    _run_with(connection)
else:
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("set sqlalchemy.url to run the inventory migrations by hand")
    engine = create_engine(url)
    with engine.begin() as opened:
        _run_with(opened)
    engine.dispose()
