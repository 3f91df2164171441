"""Settings of the scale-out example: the TASKS setting chooses where tasks run."""

import importlib.util
import os

SECRET_KEY = "docs-example-not-secret"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
INSTALLED_APPS = []
if importlib.util.find_spec("django.tasks") is None:  # Django < 6.0: the backport
    INSTALLED_APPS.append("django_tasks")

if os.environ.get("PGDATABASE"):  # host, port, user from the PG* variables
    DATABASES = {
        "default": {"ENGINE": "django.db.backends.postgresql", "NAME": os.environ["PGDATABASE"]}
    }
else:
    DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}

# --8<-- [start:tasks-setting]
# The one setting that says where tasks run.
TASKS_BACKEND = os.environ.get("TASKS_BACKEND", "backgrounder")

if TASKS_BACKEND == "backgrounder":  # in this process, on backgrounder's engine
    TASKS = {
        "default": {
            "BACKEND": "backgrounder.django.BackgrounderBackend",
            # One task at a time, like one db_worker, so that priorities show.
            "OPTIONS": {"MAX_RUNNING": 1},
        }
    }
elif TASKS_BACKEND == "database":  # in `manage.py db_worker` processes
    INSTALLED_APPS.append("django_tasks_db")  # then `manage.py migrate`
    TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend"}}
# --8<-- [end:tasks-setting]
else:
    raise ValueError(f"TASKS_BACKEND must be 'backgrounder' or 'database', got {TASKS_BACKEND!r}")
