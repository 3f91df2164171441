"""A plain script: @background from sync code, and nothing lost at exit.

    python script.py
"""

import logging
import sys
import time

from backgrounder import background

logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(message)s")
log = logging.getLogger("script")


@background
def thumbnail(name: str) -> str:
    """Sync, blocking: runs on backgrounder's native thread pool."""
    time.sleep(0.05)  # stands in for real work
    return f"{name}.thumb.png"


@background
def log_line(i: int) -> None:
    log.info("line %d", i)  # logging is thread-safe: one whole line each


def main() -> None:
    # Start three calls; each returns a handle at once.
    handles = [thumbnail(name) for name in ("cat", "dog", "owl")]
    # Wait for the results, when you need them.
    print([handle.result(timeout=10) for handle in handles])

    # Fire and forget: nobody waits for these handles...
    for i in range(1000):
        log_line(i)
    # ...yet all 1,000 lines are printed: at exit, the work backgrounder has
    # accepted finishes before the interpreter finalizes.


if __name__ == "__main__":
    main()
