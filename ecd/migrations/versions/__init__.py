"""Alembic revision scripts of the topology database (``0001_initial``, ``0002_network``)."""
