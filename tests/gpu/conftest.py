"""The GPU tests run on a machine whose pytest may lack plugins (they travel as wheels, see the
README's "Development"): stop at once, naming what is missing, rather than skip or hang."""

from __future__ import annotations

import pytest

NEEDED = {"asyncio": "pytest-asyncio", "timeout": "pytest-timeout"}


def pytest_configure(config: pytest.Config) -> None:
    missing = [dist for name, dist in NEEDED.items() if not config.pluginmanager.has_plugin(name)]
    if missing:
        raise pytest.UsageError(
            f"the GPU tests need {', '.join(missing)}: fetch the wheels with "
            "../shared/tools/device-wheels.sh and install .whl/*.whl as the README says"
        )
