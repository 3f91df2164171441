"""An application module that a preforking server's master imports before it
forks its workers, as `gunicorn --preload` does (tests/test_lifecycle.py).

Importing it uses backgrounder in the master: the pool has workers and
backgrounder's loop thread runs when the workers are forked.
"""

import asyncio

import backgrounder


@backgrounder.background
def double(x):
    return 2 * x


@backgrounder.background
async def triple(x):
    await asyncio.sleep(0)
    return 3 * x


def add_one(x):
    return x + 1


async def handle_request(x):
    """What a request handler in a worker does: awaits a sync Task."""
    return await backgrounder.Task(add_one, x)()


assert double(1).result(timeout=10) == 2
assert triple(1).result(timeout=10) == 3
