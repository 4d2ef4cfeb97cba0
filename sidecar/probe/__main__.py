"""``python -m sidecar.probe ARGS``: the probe on its own (``python -m sidecar probe`` is the same)."""

from sidecar.probe.main import main

raise SystemExit(main())
