"""Alembic migrations of the inventory, shipped inside the package and run by ``Inventory.migrate``."""
