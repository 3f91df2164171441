"""The engine's lifecycle: configure, errors, wait_idle, stats, shutdown.

    python lifecycle.py
"""

import logging

import backgrounder
from backgrounder import background

logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")


@background
def charge(amount: int) -> int:
    if amount < 0:
        raise ValueError(f"cannot charge {amount}")
    return amount


def main() -> None:
    # Size the pool; arguments left out keep their values.
    backgrounder.configure(max_workers=8, idle_timeout=10)

    # An exception comes back from the handle...
    handle = charge(-1)
    try:
        handle.result(timeout=5)
    except ValueError as exc:
        print("handle.result() raised:", exc)

    # ...and one that nobody retrieves is logged on the "backgrounder" logger
    # at ERROR, with its traceback, once the handle is done and dropped.
    charge(-2)
    backgrounder.wait_idle(timeout=5)

    # on_error gets those exceptions instead of the logger.
    errors: list[BaseException] = []
    backgrounder.configure(on_error=errors.append)
    charge(-3)
    backgrounder.wait_idle(timeout=5)
    print("on_error got:", errors)
    backgrounder.configure(on_error=None)  # back to the logger

    stats = backgrounder.stats()
    print("submitted", stats["submitted"], "failed", stats["failed"])

    # Stop taking work; what was accepted still finishes.
    print("shut down cleanly:", backgrounder.shutdown(wait=True, timeout=10))
    try:
        charge(1)
    except RuntimeError as exc:
        print("after shutdown:", exc)


if __name__ == "__main__":
    main()
