"""The I/O edge: the main server's KServe v2 model repository extension, over ``httpx``.

Calls (and nothing else): ``POST /v2/repository/index``, ``POST
/v2/repository/models/{name}/load``, ``POST /v2/repository/models/{name}/unload``, ``GET
/v2/models/{name}/versions/{v}/ready`` and, for Triton, ``GET /v2/models/{name}/config``.

How a version is chosen differs by server (``docs/actions.md``):

- **Triton** (``--model-control-mode=explicit``): the load request carries a config override
  whose ``version_policy`` is ``{"specific": {"versions": [v]}}`` (the model's current config,
  read from ``/v2/models/{name}/config``, with only that field replaced); a release loads with
  no override, so the repository's ``config.pbtxt`` applies again.
- **MLServer** (1.7): its load call takes no body and loads *every* version whose
  ``model-settings.json`` it finds under the repository (then unloads the versions it no longer
  finds). The sidecar therefore *parks* the other versions (renames their
  ``model-settings.json`` to ``model-settings.json.parked-by-trt-health``, atomically) and calls
  load; a release un-parks every version and calls load again.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx

from sidecar.core.errors import SidecarError

SETTINGS = "model-settings.json"
PARKED = SETTINGS + ".parked-by-trt-health"
MAX_SETTINGS_BYTES = 256 * 1024
MAX_SETTINGS_FILES = 1024


class ActionCallError(SidecarError):
    """A call to the main server (or a repository edit) failed; the message says which."""


@dataclass(frozen=True, slots=True)
class ServedState:
    """What the server says it serves for one model: the versions its index lists and those
    that answer ready."""

    listed: tuple[str, ...]
    ready: tuple[str, ...]

    def describe(self) -> str:
        return f"listed {list(self.listed)}, ready {list(self.ready)}"


class RepositoryClient:
    def __init__(self, url: str, timeout_s: float, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.url = url
        self.client = httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(timeout_s), transport=transport)

    async def close(self) -> None:
        await self.client.aclose()

    async def _call(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> httpx.Response:
        try:
            r = await self.client.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise ActionCallError(f"{method} {path}: {type(exc).__name__}: {exc}") from None
        return r

    async def index(self) -> list[dict[str, Any]]:
        r = await self._call("POST", "/v2/repository/index", {})
        if r.status_code != 200:
            raise ActionCallError(f"POST /v2/repository/index -> {r.status_code}: {r.text[:200]}")
        try:
            doc = r.json()
        except ValueError:
            raise ActionCallError("POST /v2/repository/index answered no JSON") from None
        if isinstance(doc, dict):  # some servers wrap the list
            doc = doc.get("models", [])
        return [d for d in doc if isinstance(d, dict)] if isinstance(doc, list) else []

    async def load(self, model: str, body: Mapping[str, Any] | None = None) -> str:
        path = f"/v2/repository/models/{model}/load"
        r = await self._call("POST", path, body or {})
        if r.status_code != 200:
            raise ActionCallError(f"POST {path} -> {r.status_code}: {r.text[:300]}")
        return f"POST {path} -> 200"

    async def unload(self, model: str) -> str:
        path = f"/v2/repository/models/{model}/unload"
        r = await self._call("POST", path, {})
        if r.status_code != 200:
            raise ActionCallError(f"POST {path} -> {r.status_code}: {r.text[:300]}")
        return f"POST {path} -> 200"

    async def model_config(self, model: str) -> dict[str, Any]:
        r = await self._call("GET", f"/v2/models/{model}/config")
        if r.status_code != 200:
            raise ActionCallError(f"GET /v2/models/{model}/config -> {r.status_code}")
        doc = r.json()
        if not isinstance(doc, dict):
            raise ActionCallError(f"GET /v2/models/{model}/config: not an object")
        return doc

    async def version_ready(self, model: str, version: str) -> bool:
        r = await self._call("GET", f"/v2/models/{model}/versions/{version}/ready")
        return r.status_code == 200

    async def served(self, model: str) -> ServedState:
        listed = [str(d.get("version") or "") for d in await self.index() if d.get("name") == model]
        ready = [v for v in listed if v and await self.version_ready(model, v)]
        return ServedState(tuple(sorted(set(listed))), tuple(sorted(set(ready))))


class Driver(Protocol):
    """Pins a model to one version (None: releases the pin)."""

    kind: str

    async def current_pin(self, model: str) -> str | None:
        """The pin an earlier run of the sidecar left on the server, where it can be told
        (a restart or a reload does not forget that the server is pinned)."""
        ...

    def plan(self, model: str, version: str | None) -> str:
        """What :meth:`pin` would call (the dry-run report)."""
        ...

    async def pin(self, model: str, version: str | None) -> str:
        """Make the calls; returns what was called. Raises :class:`ActionCallError`."""
        ...


class TritonDriver:
    kind = "triton"

    def __init__(self, client: RepositoryClient) -> None:
        self.client = client

    def plan(self, model: str, version: str | None) -> str:
        if version is None:
            return f"POST /v2/repository/models/{model}/load (no override: the repository's config)"
        return (
            f"POST /v2/repository/models/{model}/load with config override "
            f'version_policy {{"specific": {{"versions": [{version}]}}}}'
        )

    async def current_pin(self, model: str) -> str | None:
        return None  # a config override leaves no trace the sidecar can tell from the operator's

    @staticmethod
    def override(config: Mapping[str, Any], version: str) -> dict[str, Any]:
        try:
            number = int(version)
        except ValueError:
            raise ActionCallError(f"Triton versions are integers, got {version!r}") from None
        cfg = dict(config)
        cfg["version_policy"] = {"specific": {"versions": [number]}}
        return {"parameters": {"config": json.dumps(cfg)}}

    async def pin(self, model: str, version: str | None) -> str:
        if version is None:
            return await self.client.load(model)
        cfg = await self.client.model_config(model)
        return await self.client.load(model, self.override(cfg, version))


@dataclass(frozen=True, slots=True)
class _Settings:
    path: Path  # the file as it is now (parked or not)
    version: str
    parked: bool


def _scan(root: Path, model: str) -> list[_Settings]:
    found: list[_Settings] = []
    seen = 0
    for dirpath, _dirs, files in os.walk(root):
        for fname in (SETTINGS, PARKED):
            if fname not in files:
                continue
            seen += 1
            if seen > MAX_SETTINGS_FILES:
                raise ActionCallError(f"{root}: more than {MAX_SETTINGS_FILES} model settings files")
            path = Path(dirpath) / fname
            try:
                if path.stat().st_size > MAX_SETTINGS_BYTES:
                    continue
                doc = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if not isinstance(doc, dict) or doc.get("name") != model:
                continue
            params = doc.get("parameters") or {}
            version = str(params.get("version") or "") if isinstance(params, dict) else ""
            found.append(_Settings(path, version, fname == PARKED))
    return found


def _apply_parking(root: Path, model: str, version: str | None) -> list[str]:
    entries = _scan(root, model)
    if version is not None and not any(e.version == version for e in entries):
        raise ActionCallError(f"{root}: no model-settings for {model} version {version}")
    done: list[str] = []
    for e in entries:
        park = version is not None and e.version != version
        if park and not e.parked:
            os.replace(e.path, e.path.with_name(PARKED))
            done.append(f"parked {model} version {e.version or '-'}")
        elif not park and e.parked:
            os.replace(e.path, e.path.with_name(SETTINGS))
            done.append(f"un-parked {model} version {e.version or '-'}")
    return done


class MLServerDriver:
    kind = "mlserver"

    def __init__(self, client: RepositoryClient, repository_dir: Path) -> None:
        self.client = client
        self.root = repository_dir

    def plan(self, model: str, version: str | None) -> str:
        if version is None:
            return (
                f"un-park every version of {model} under {self.root}; POST /v2/repository/models/{model}/load"
            )
        return (
            f"park every version of {model} but {version} under {self.root}; "
            f"POST /v2/repository/models/{model}/load"
        )

    async def current_pin(self, model: str) -> str | None:
        try:
            entries = await asyncio.to_thread(_scan, self.root, model)
        except (OSError, ActionCallError):
            return None
        live = [e.version for e in entries if not e.parked]
        if any(e.parked for e in entries) and len(live) == 1:
            return live[0]
        return None

    async def pin(self, model: str, version: str | None) -> str:
        try:
            edits = await asyncio.to_thread(_apply_parking, self.root, model, version)
        except OSError as exc:
            raise ActionCallError(f"{self.root}: {exc}") from None
        call = await self.client.load(model)
        return "; ".join([*edits, call])


def make_driver(kind: str, client: RepositoryClient, repository_dir: Path | None) -> Driver:
    if kind == "triton":
        return TritonDriver(client)
    if repository_dir is None:
        raise ActionCallError("MLServer needs actions.repository_dir")
    return MLServerDriver(client, repository_dir)
