"""The type stubs say what the API does: mypy and pyright agree with tests/typing/examples.py.

examples.py states the type of each good call with ``assert_type`` and marks
each bad call with the error each checker must report there. Both checkers run
strict and report an ignore comment that suppresses nothing, so these tests fail
when a good call stops checking or changes type, and when a bad call stops being
an error. They read backgrounder from this source tree (the .pyi stands in for
the extension module) and need requirements/typing.txt, nothing from the network.

Select with ``-m typing``; leave out with ``-m "not typing"``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.typing

ROOT = Path(__file__).resolve().parent.parent
TYPING = ROOT / "tests" / "typing"
EXAMPLES = TYPING / "examples.py"
MYPY_INI = TYPING / "mypy.ini"
PYRIGHT_CONFIG = TYPING / "pyrightconfig.json"
# The oldest Python the package supports and the one running the tests.
PYTHON_VERSIONS = sorted({"3.10", "{}.{}".format(*sys.version_info[:2])})
CHECKER_TIMEOUT = 300

# Two lines: a good call wrongly marked as an error, then a bad call unmarked.
CANARY = """\
from backgrounder import Task


def add(x: int) -> int:
    return x


Task(add, 1)  # type: ignore[call-overload]  # pyright: ignore[reportCallIssue]
Task(add, "1")
"""


def require(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed: pip install -r requirements/typing.txt")


@pytest.fixture(scope="module")
def mypy_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mypy-cache")


def run_mypy(cache: Path, python_version: str, *files: Path) -> tuple[int, str]:
    require("mypy")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            f"--config-file={MYPY_INI}",
            f"--cache-dir={cache}",
            f"--python-version={python_version}",
            "--no-color-output",
            "--no-error-summary",
            *map(str, files),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=CHECKER_TIMEOUT,
    )
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr
    return proc.returncode, proc.stdout


def run_pyright(python_version: str, *files: Path) -> list[str]:
    """Runs the pyright bundled in its PyPI wheel; returns its diagnostics."""
    require("pyright")
    env = dict(os.environ, PYRIGHT_PYTHON_IGNORE_WARNINGS="1")
    # Another version than the bundled one would be fetched from npm.
    env.pop("PYRIGHT_PYTHON_FORCE_VERSION", None)
    env.pop("PYRIGHT_PYTHON_PYLANCE_VERSION", None)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pyright",
            "--outputjson",
            f"--project={PYRIGHT_CONFIG}",
            f"--pythonpath={sys.executable}",
            f"--pythonversion={python_version}",
            *map(str, files),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=CHECKER_TIMEOUT,
        env=env,
    )
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"pyright did not run:\n{proc.stdout}\n{proc.stderr}")
    assert report["summary"]["filesAnalyzed"] >= 1, report
    return [
        f"{Path(d['file']).name}:{d['range']['start']['line'] + 1}: "
        f"{d.get('rule', d['severity'])}: {d['message']}"
        for d in report["generalDiagnostics"]
    ]


@pytest.mark.parametrize("python_version", PYTHON_VERSIONS)
def test_mypy_agrees_with_the_typing_examples(mypy_cache: Path, python_version: str) -> None:
    status, output = run_mypy(mypy_cache, python_version, EXAMPLES)
    assert (status, output) == (0, ""), output


@pytest.mark.parametrize("python_version", PYTHON_VERSIONS)
def test_pyright_agrees_with_the_typing_examples(python_version: str) -> None:
    diagnostics = run_pyright(python_version)
    assert diagnostics == [], "\n".join(diagnostics)


def test_mypy_reports_a_needless_ignore_and_an_unmarked_error(
    mypy_cache: Path, tmp_path: Path
) -> None:
    canary = tmp_path / "canary.py"
    canary.write_text(CANARY)
    status, output = run_mypy(mypy_cache, PYTHON_VERSIONS[-1], canary)
    errors = re.findall(r"canary\.py:(\d+): error: .*\[([\w-]+)\]$", output, re.M)
    assert (status, sorted(errors)) == (1, [("8", "unused-ignore"), ("9", "call-overload")]), output


def test_pyright_reports_a_needless_ignore_and_an_unmarked_error(tmp_path: Path) -> None:
    canary = tmp_path / "canary.py"
    canary.write_text(CANARY)
    diagnostics = run_pyright(PYTHON_VERSIONS[-1], canary)
    rules = sorted({tuple(d.split(": ")[:2]) for d in diagnostics})
    assert rules == [
        ("canary.py:8", "reportUnnecessaryTypeIgnoreComment"),
        ("canary.py:9", "reportArgumentType"),
        ("canary.py:9", "reportCallIssue"),
    ], "\n".join(diagnostics)


def test_the_package_ships_its_type_information() -> None:
    spec = importlib.util.find_spec("backgrounder")
    assert spec is not None and spec.submodule_search_locations
    package = Path(next(iter(spec.submodule_search_locations)))
    assert (package / "py.typed").is_file()
    assert (package / "_backgrounder.pyi").is_file()
