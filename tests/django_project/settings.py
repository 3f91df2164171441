"""Settings of the Django project used by backgrounder's tests."""

import importlib.util

SECRET_KEY = "backgrounder-tests-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["testserver", "localhost"]
ROOT_URLCONF = "django_project.urls"
USE_TZ = True
MIDDLEWARE = []
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"

HAS_DJANGO_TASKS_BUILTIN = importlib.util.find_spec("django.tasks") is not None
HAS_DJANGO_TASKS_BACKPORT = importlib.util.find_spec("django_tasks") is not None

# django.tasks is built in from Django 6.0; before that the django-tasks
# backport is an app (its ready() connects the signal that resets the backends
# when override_settings changes TASKS).
INSTALLED_APPS = []
if not HAS_DJANGO_TASKS_BUILTIN and HAS_DJANGO_TASKS_BACKPORT:
    INSTALLED_APPS.append("django_tasks")

BACKGROUNDER_BACKEND = "backgrounder.django.BackgrounderBackend"
IMMEDIATE_BACKEND = (
    "django.tasks.backends.immediate.ImmediateBackend"
    if HAS_DJANGO_TASKS_BUILTIN
    else "django_tasks.backends.immediate.ImmediateBackend"
)

TASKS = {
    "default": {"BACKEND": BACKGROUNDER_BACKEND},
}
