"""The @background decorator, at backgrounder 0.2.0's import path."""

from ._backgrounder import BackgroundHandle as BackgroundHandle
from ._backgrounder import background as background

__all__ = ["BackgroundHandle", "background"]
