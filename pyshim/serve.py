"""`python -m pyshim serve [uvicorn options]`: uvicorn serving the shim's app, with the
limits the shim's promises need set in one place for every way it is started (make run,
make ha-run, the tests and the benchmarks; a benchmark's own app is served through main's
`app` so that it runs under the same limits)."""

from __future__ import annotations

from uvicorn.main import main as uvicorn_command

# h11 keeps at most this much of a request head that has not ended yet; past it, uvicorn
# answers a bare text/plain 400 and closes the connection (often a reset, with the request
# still arriving). Its default, 16 KiB, is smaller than heads the shim answers itself with
# the contract's JSON 400 (a 100 KB Stripe-Signature), and which of the two answers such a
# head got depended on how the kernel cut it into reads: a whole head is parsed at any
# size, a part of one is not. With 1 MiB every head up to 1 MiB is the app's to answer.
MAX_REQUEST_HEAD_BYTES = 1 << 20


def main(argv: list[str], app: str = "pyshim.app:app") -> int:
    """app: the ASGI app to serve, as uvicorn's "module:attribute"."""
    args = [app, "--h11-max-incomplete-event-size", str(MAX_REQUEST_HEAD_BYTES), *argv]
    return uvicorn_command.main(args=args, prog_name="python -m pyshim serve")
