"""localstripe (a fake Stripe API) on 127.0.0.1 only, keeping its state in memory.

    python -m tests.localstripe_server PORT

Its own CLI binds every interface and pickles its state to a fixed file in /tmp; this
starts its aiohttp app on loopback and turns the pickling off (FIELD-NOTES.md)."""

from __future__ import annotations

import sys

from aiohttp import web
from localstripe import resources

resources.Store.dump_to_disk = lambda self: None
resources.Store.try_load_from_disk = lambda self: None

from localstripe.server import app  # noqa: E402 - after the patch

if __name__ == "__main__":
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None)
