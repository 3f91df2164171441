"""is_async_callable, at backgrounder 0.2.0's import path."""

from ._backgrounder import is_async_callable as is_async_callable

__all__ = ["is_async_callable"]
