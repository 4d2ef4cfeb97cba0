"""``python -m sidecar.canary.worker [--allow-faults]``: see :mod:`sidecar.canary.worker.main`."""

import sys

from sidecar.canary.worker.main import main

sys.exit(main())
