"""``python -m sidecar.webhook ARGS``: the injector on its own (same as ``trt-health-sidecar webhook``)."""

from sidecar.webhook.main import main

raise SystemExit(main())
