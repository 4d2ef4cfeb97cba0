"""`python -m sidecar ...`: the probe subcommand takes a fast path (no heavy imports)."""

from __future__ import annotations

import sys


def _main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "probe":
        from sidecar.probe import main as probe_main

        return probe_main(sys.argv[2:])
    from sidecar.cli import main

    return main()


if __name__ == "__main__":
    raise SystemExit(_main())
