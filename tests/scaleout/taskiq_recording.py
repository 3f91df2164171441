"""The taskiq example's broker, with a middleware that records each run.

Imported by the app side (taskiq_driver.py) and by `taskiq worker
taskiq_recording:broker`: each process that executes a task appends one JSON
line (task id, task name, pid, error or not) to the file $TASKIQ_RECORD, so
the test sees how many times, and in which process, every task ran.
"""

import json
import os

from taskiq import TaskiqMiddleware
from taskiq_app import broker

RECORD = os.environ["TASKIQ_RECORD"]


class Recorder(TaskiqMiddleware):
    def post_execute(self, message, result):
        line = {
            "task_id": message.task_id,
            "task": message.task_name,
            "pid": os.getpid(),
            "is_err": result.is_err,
        }
        fd = os.open(RECORD, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (json.dumps(line) + "\n").encode())
        finally:
            os.close(fd)


broker.add_middlewares(Recorder())

__all__ = ["broker"]
