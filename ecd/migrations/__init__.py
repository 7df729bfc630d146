"""Alembic migrations of the topology database, driven programmatically (no alembic.ini).

``TopologyStore.ensure_schema`` builds an :class:`alembic.config.Config`, points
``script_location`` at this directory and passes its open connection in
``config.attributes["connection"]``. Revisions: ``0001`` is the issue #2 schema, ``0002`` the
network of issue #3. ``SCRIPT_LOCATION`` is this directory.
"""

from __future__ import annotations

from pathlib import Path

#: The directory holding ``env.py`` and ``versions/``.
SCRIPT_LOCATION = str(Path(__file__).resolve().parent)
