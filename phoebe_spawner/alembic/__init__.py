"""Alembic migration environment of phoebe-spawner (see env.py); run by phoebe_spawner.store."""
