"""Fixtures of the live viewer's tests: the embedded demo loaded once, served on a free port."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest

from tl_inversion.demo import load_demo
from tl_inversion.tasks import counting
from tl_inversion.viewer.server import serve


@pytest.fixture(scope="session")
def demo() -> tuple[Any, Any, Any]:
    """(model, bank, task) of the embedded counting demo."""
    model, bank = load_demo()
    return model, bank, counting.make_task()


@pytest.fixture(scope="session")
def viewer(demo):
    """The viewer over the demo, serving in a background thread on an ephemeral port."""
    model, bank, task = demo
    handle = serve(model, bank, task, port=0, block=False, default_query="ddkdkkxdk|k:4")
    yield handle
    handle.close()


@pytest.fixture(scope="session")
def http():
    """``http(url, body=None, raw=None) -> (status, JSON)``: a GET, or a POST of ``body`` as JSON."""
    return _http


def _http(url: str, body: Any = None, raw: bytes | None = None) -> tuple[int, Any]:
    """(status, decoded JSON) of a GET (no body) or a POST of ``body`` as JSON (or ``raw`` bytes)."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=300) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())
