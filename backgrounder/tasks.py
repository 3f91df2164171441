"""Task and Tasks, at backgrounder 0.2.0's import path."""

from ._backgrounder import Task as Task
from ._backgrounder import Tasks as Tasks

__all__ = ["Task", "Tasks"]
