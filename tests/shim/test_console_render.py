"""pyshim.console.render: every value from the database reaches the page escaped, in every
panel, and an empty database renders every panel with its empty message."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal

from pyshim.console import PANELS, render

EVIL = "<img src=x onerror=alert(1)>\"'&"


def panels(value) -> dict:
    now = dt.datetime.now(dt.timezone.utc)
    return {
        "now": [(now,)],
        "success_metrics": [(value, Decimal("1.50"), value, False, value)],
        "open_errors": [(value, "critical", value, value, 3, now, now, 1)],
        "activity": [(now - dt.timedelta(hours=23 - i), i, 0, 2 * i, 1) for i in range(24)],
        "holds": [(value, uuid.uuid4(), 10, 1, 2, 3, 4, now, 1)],
        "jobs": [(value, value, 1, now)],
        "cron": [(value, value, value, now, Decimal("1.0"), Decimal("0"), 1, 0, value)],
        "stripe_events": [(value, value, value, 1, value, value, now, None, 1)],
        "reconciliation": [(now, value, value, value, 1, None, value, value, 1)],
    }


def test_every_panel_is_read_and_every_value_escaped():
    page = render(panels(EVIL), 12.3)
    assert set(panels(EVIL)) == set(PANELS)
    assert "<img" not in page and "onerror=alert(1)&gt;" in page
    assert page.count("&lt;img src=x onerror=alert(1)&gt;&quot;&#x27;&amp;") >= 15
    assert page.count("<svg") == 4 and page.count("<rect") == 4 * 24


def test_an_empty_database_renders_every_panel():
    empty = {name: [] for name in PANELS}
    empty["now"] = [(dt.datetime.now(dt.timezone.utc),)]
    empty["activity"] = [(dt.datetime.now(dt.timezone.utc), 0, 0, 0, 0)] * 24
    page = render(empty, 1)
    for message in ("no metrics", "no open error", "no inventory", "no job", "no cron job registered", "none failing",
                    "no mismatch"):
        assert message in page
