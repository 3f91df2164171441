"""@background inside a real Django project (issue 4).

Django is set up by the module fixture ``project``: it calls
``django_project.setup()`` (DJANGO_SETTINGS_MODULE=django_project.settings,
``django.setup()``); no pytest-django.  Requests go through Django's test
``Client`` (the WSGI-like handler; an async view then runs under asgiref's
``async_to_sync``) and ``AsyncClient`` (the ASGI handler, on the ``run`` loop;
a sync view then runs under ``sync_to_async``).  Django's ASGI handler is
asyncio code: the AsyncClient tests run under asyncio and uvloop, not trio.

Each view starts a @background function that waits on a gate the test opens
only after the response has arrived: if the decorator blocked the view, the
response could not arrive first.
"""

import asyncio
import gc
import logging
import os
import sys
import time
import uuid

import pytest

pytest.importorskip("django")

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import django_project

WAIT = 5.0

VIEWS = ["sync", "async"]
FNS = ["sync", "async"]

# The AsyncClient tests run under asyncio and uvloop only: Django's ASGI
# handler is asyncio code (under a trio run its first await, the
# request_started signal's asyncio.gather, fails: trio cannot wait on an
# asyncio future).
ASYNC_CLIENT_ONLY_ON_ASYNCIO = pytest.mark.asyncio_only(
    "Django's AsyncClient (its ASGI handler, Signal.asend's asyncio.gather, asgiref's "
    "sync_to_async) awaits asyncio futures, which a trio run cannot wait on"
)


@pytest.fixture(scope="module")
def project():
    django_project.setup()
    from django_project import views

    return views


def get_sync(url):
    from django.test import Client

    return Client().get(url)


async def get_async(url):
    from django.test import AsyncClient

    return await AsyncClient().get(url)


def url_for(view_kind, fn_kind, token, fail=False):
    return f"/{view_kind}{'-fail' if fail else ''}/{fn_kind}/?token={token}"


async def wait_handle(handle):
    return await asyncio.wait_for(_await(handle), WAIT)


async def _await(handle):
    return await handle


# -- the response arrives while the work is pending; the work then completes --


@pytest.mark.parametrize("fn_kind", FNS)
@pytest.mark.parametrize("view_kind", VIEWS)
def test_client_response_arrives_before_background_work_completes(project, view_kind, fn_kind):
    token = uuid.uuid4().hex
    gate = project.gate(token)
    try:
        response = get_sync(url_for(view_kind, fn_kind, token))
        handle = project.HANDLES.pop(token)
        assert response.status_code == 200
        assert response.json()["done_at_response"] is False
        assert not handle.done()
    finally:
        gate.set()
    assert handle.result(timeout=WAIT) == {"fn": fn_kind, "token": token, "seen": token}


@pytest.mark.parametrize("fn_kind", FNS)
@pytest.mark.parametrize("view_kind", VIEWS)
@ASYNC_CLIENT_ONLY_ON_ASYNCIO
def test_async_client_response_arrives_before_background_work_completes(
    project, run, view_kind, fn_kind
):
    token = uuid.uuid4().hex
    gate = project.gate(token)

    async def main():
        try:
            response = await get_async(url_for(view_kind, fn_kind, token))
            handle = project.HANDLES.pop(token)
            assert response.status_code == 200
            assert response.json()["done_at_response"] is False
            assert not handle.done()
        finally:
            gate.set()
        # An async function started inside the async view runs on this loop:
        # keep the loop running until it ends.
        return await wait_handle(handle)

    assert run(main()) == {"fn": fn_kind, "token": token, "seen": token}


def test_client_response_time_does_not_include_the_work(project):
    token = uuid.uuid4().hex
    gate = project.gate(token)
    try:
        started = time.monotonic()
        response = get_sync(url_for("sync", "sync", token))
        elapsed = time.monotonic() - started
        handle = project.HANDLES.pop(token)
        assert response.status_code == 200
        time.sleep(0.3)  # the work keeps waiting after the response
        assert not handle.done()
    finally:
        gate.set()
    handle.result(timeout=WAIT)
    assert elapsed < 1.0  # the work would hold it for WAIT_LIMIT (5 s)


# -- contextvars set by the view are visible in the work -----------------------


@pytest.mark.parametrize("fn_kind", FNS)
@pytest.mark.parametrize("view_kind", VIEWS)
def test_client_view_contextvars_are_visible_in_background_work(project, view_kind, fn_kind):
    token = uuid.uuid4().hex
    project.gate(token).set()
    response = get_sync(url_for(view_kind, fn_kind, token))
    assert response.status_code == 200
    assert project.HANDLES.pop(token).result(timeout=WAIT)["seen"] == token


@pytest.mark.parametrize("fn_kind", FNS)
@pytest.mark.parametrize("view_kind", VIEWS)
@ASYNC_CLIENT_ONLY_ON_ASYNCIO
def test_async_client_view_contextvars_are_visible_in_background_work(
    project, run, view_kind, fn_kind
):
    token = uuid.uuid4().hex
    project.gate(token).set()

    async def main():
        response = await get_async(url_for(view_kind, fn_kind, token))
        assert response.status_code == 200
        return await wait_handle(project.HANDLES.pop(token))

    assert run(main())["seen"] == token


# -- a failing background function is logged; the response is unaffected -----


def failure_records(caplog, fn_kind):
    return [
        record
        for record in caplog.records
        if record.name == "backgrounder"
        and record.levelno == logging.ERROR
        and f"{fn_kind}_explode" in record.getMessage()
    ]


@pytest.mark.parametrize("fn_kind", FNS)
@pytest.mark.parametrize("view_kind", VIEWS)
def test_client_failing_background_work_is_logged_and_response_is_fine(
    project, caplog, view_kind, fn_kind
):
    caplog.set_level(logging.ERROR, logger="backgrounder")
    response = get_sync(url_for(view_kind, fn_kind, uuid.uuid4().hex, fail=True))
    assert response.status_code == 200
    assert response.content == b"still fine"
    deadline = time.monotonic() + WAIT
    while not failure_records(caplog, fn_kind) and time.monotonic() < deadline:
        gc.collect()
        time.sleep(0.01)
    [record] = failure_records(caplog, fn_kind)
    assert record.exc_info[0] is ValueError
    assert f"{fn_kind} work failed" in str(record.exc_info[1])


@pytest.mark.parametrize("fn_kind", FNS)
@pytest.mark.parametrize("view_kind", VIEWS)
@ASYNC_CLIENT_ONLY_ON_ASYNCIO
def test_async_client_failing_background_work_is_logged_and_response_is_fine(
    project, run, caplog, view_kind, fn_kind
):
    caplog.set_level(logging.ERROR, logger="backgrounder")

    async def main():
        response = await get_async(url_for(view_kind, fn_kind, uuid.uuid4().hex, fail=True))
        deadline = time.monotonic() + WAIT
        while not failure_records(caplog, fn_kind) and time.monotonic() < deadline:
            gc.collect()
            await asyncio.sleep(0.01)
        return response

    response = run(main())
    assert response.status_code == 200
    assert response.content == b"still fine"
    [record] = failure_records(caplog, fn_kind)
    assert record.exc_info[0] is ValueError
    assert f"{fn_kind} work failed" in str(record.exc_info[1])
