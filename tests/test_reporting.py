"""What reaches the `backgrounder` logger, and stderr, when nobody retrieves
a failure: the record points at the failed function, so every framework's
log format names it; without any logging set up, stderr still shows the
level, the logger's name and the traceback."""

from __future__ import annotations

import gc
import logging
import subprocess
import sys
import textwrap

import backgrounder


def failing_job(order: int) -> None:
    raise ValueError(f"order {order} is broken")   # the line the record points at


def test_the_record_of_an_unretrieved_failure_points_at_the_failed_function(caplog):
    with caplog.at_level(logging.ERROR, logger="backgrounder"):
        handle = backgrounder.background(failing_job)(7)
        assert backgrounder.wait_idle(10)
        del handle
        gc.collect()
    records = [r for r in caplog.records if r.name == "backgrounder"]
    assert len(records) == 1, [r.getMessage() for r in records]
    record = records[0]
    assert record.levelname == "ERROR"
    assert record.funcName == "failing_job"
    assert record.pathname == __file__
    assert record.module == "test_reporting"
    with open(__file__) as f:
        source = f.read().splitlines()
    assert "the line the record points at" in source[record.lineno - 1]
    assert "failing_job" in record.getMessage() and "7" not in record.getMessage()
    assert record.exc_info is not None and record.exc_info[0] is ValueError


def test_without_logging_set_up_stderr_has_the_level_the_name_and_the_traceback():
    script = textwrap.dedent(
        """
        import gc, backgrounder

        def failing_job():
            raise ValueError("broken")

        handle = backgrounder.background(failing_job)()
        backgrounder.wait_idle(10)
        del handle
        gc.collect()
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert lines[0] == "ERROR:backgrounder:background call __main__.failing_job failed", proc.stderr
    assert lines[1] == "Traceback (most recent call last):", proc.stderr
    assert lines[-1] == "ValueError: broken", proc.stderr
