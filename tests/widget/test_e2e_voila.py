"""End to end: the Explorer in Voilà (a notebook served as an app, the workshop case) and headless
Chromium: it renders (its attention arrives over the comm), the layer slider redraws the map, a
brush of three patches shows the probability ``vx.intervene`` gives in this process.

Needs the ``voila`` extra (``pip install -e '.[voila]'``); skips saying why when it, chromium,
playwright or the built front end is missing.
"""

from __future__ import annotations

import pytest

from .host_harness import browser_errors, drive, expected, missing, voila_server
from .jupyter_harness import browser

pytestmark = [pytest.mark.ui, pytest.mark.slow]

_why = missing("voila", "voila")
if _why:
    pytestmark.append(pytest.mark.skip(reason=_why))


def test_explorer_in_voila() -> None:
    exp = expected()
    server, url = voila_server()
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
