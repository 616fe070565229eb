"""Alembic migration environment of phoebe-spawner (see env.py); run from phoebe_spawner.db."""
