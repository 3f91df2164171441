"""An asyncio program: await Task and Tasks, gather many, start work with
@background.

    python asyncio_script.py
"""

import asyncio
import hashlib

from backgrounder import Task, Tasks, background


def checksum(data: bytes) -> str:
    """Sync, CPU-bound: runs on backgrounder's native thread pool."""
    return hashlib.sha256(data).hexdigest()[:12]


async def fetch(name: str) -> bytes:
    """Async: runs in the task that awaits it."""
    await asyncio.sleep(0.01)  # stands in for network I/O
    return name.encode()


@background
async def warm_cache(key: str) -> str:
    await asyncio.sleep(0.01)
    return f"warmed {key}"


async def main() -> None:
    # One call: the loop stays free while the pool works.
    print(await Task(checksum, b"hello")())
    print(await Task(fetch, "index.html")())

    # Many calls at once: task() is a coroutine, so gather() takes it.
    sums = await asyncio.gather(*(Task(checksum, bytes([i]))() for i in range(100)))
    print(len(sums), "checksums")

    # Several tasks as one: in order, or all at once with as_group=True.
    done: list[str] = []
    await Tasks([Task(done.append, "first"), Task(done.append, "second")])()
    print(done)

    # @background inside a running loop: the call starts on this loop at
    # once; await its handle for the result.
    handle = warm_cache("home")
    print(await handle)


if __name__ == "__main__":
    asyncio.run(main())
