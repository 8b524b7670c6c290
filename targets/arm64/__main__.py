"""``python -m banana.targets.arm64 --ensure``: set up the arm64 runtime (used by bootstrap)."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from banana.compiler.errors import BananaError

from .runtime import ensure_runtime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m banana.targets.arm64", description=__doc__)
    parser.add_argument(
        "--ensure", action="store_true", help="download/build the arm64 runtime, print the runner"
    )
    parser.add_argument(
        "--cache-dir", type=Path, default=None, help="cache root (default: $BANANA_CACHE or <repo>/.cache)"
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    if not args.ensure:
        parser.print_help()
        return 2
    t0 = time.perf_counter()
    try:
        rt = ensure_runtime(args.cache_dir)
    except BananaError as e:
        sys.stderr.write(f"error: {e}\n")
        return e.exit_code
    logging.getLogger(__name__).info("arm64 runtime ready in %.1f s", time.perf_counter() - t0)
    sys.stdout.write(f"{rt.runner}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
