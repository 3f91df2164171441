"""A minimal Django project for backgrounder's Django tests.

``setup()`` puts this project on ``sys.path`` as the top-level package
``django_project``, points ``DJANGO_SETTINGS_MODULE`` at its settings and calls
``django.setup()`` once.  The test modules call it from a module-scoped fixture;
no pytest-django is involved.
"""

import os
import sys

SETTINGS_MODULE = "django_project.settings"


def setup():
    tests_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if tests_dir not in sys.path:
        sys.path.insert(0, tests_dir)
    os.environ["DJANGO_SETTINGS_MODULE"] = SETTINGS_MODULE

    import django
    from django.conf import settings

    if not _state["done"]:
        django.setup()
        _state["done"] = True
    return settings


_state = {"done": False}
