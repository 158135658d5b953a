"""End to end: the Explorer in Voilà (a notebook served as an app, the workshop case) and in marimo
(``mo.ui.anywidget`` in an app run with ``marimo run``), each in headless Chromium: it renders (its
attention arrives over the comm), the layer slider redraws the map, a brush of three patches shows
the probability ``vx.intervene`` gives in this process.

Needs the ``voila`` / ``marimo`` extras (``pip install -e '.[voila,marimo]'``); each host skips saying
why when it, chromium, playwright or the built front end is missing.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from .host_harness import browser_errors, drive, expected, marimo_server, missing, voila_server
from .jupyter_harness import browser

pytestmark = [pytest.mark.ui, pytest.mark.slow]


def _host(name: str, server: Callable) -> object:
    why = missing(name, name)
    return pytest.param(server, id=name, marks=[pytest.mark.skip(reason=why)] if why else [])


@pytest.mark.parametrize("start", [_host("voila", voila_server), _host("marimo", marimo_server)])
def test_explorer_in_host(start: Callable) -> None:
    exp = expected()
    server, url = start()
    try:
        with browser() as b:
            page = b.new_page(viewport={"width": 1300, "height": 1100})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            drive(page, url, exp)
            assert not browser_errors(errors), errors
    except Exception:
        print(server.log())
        raise
    finally:
        server.stop()
