"""python -m pyshim serve [uvicorn options] | python -m pyshim worker"""

from __future__ import annotations

import sys


def main() -> int:
    if sys.argv[1:2] == ["serve"]:
        from .serve import main as serve_main

        return serve_main(sys.argv[2:])
    if sys.argv[1:2] == ["worker"]:
        from .worker import main as worker_main

        return worker_main(sys.argv[2:])
    print("usage: python -m pyshim serve [uvicorn options] | python -m pyshim worker", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
