"""A small Django project whose tasks run on backgrounder first, then in a
database-backed worker, with no change but the TASKS setting.

    python -m scaleout_django                  # TASKS_BACKEND=backgrounder (default)
    TASKS_BACKEND=database django-admin migrate --settings scaleout_django.settings
    TASKS_BACKEND=database django-admin db_worker --settings scaleout_django.settings &
    TASKS_BACKEND=database python -m scaleout_django

(with this folder's parent on PYTHONPATH and, for the database, PostgreSQL
reached through the PG* environment variables).
"""
