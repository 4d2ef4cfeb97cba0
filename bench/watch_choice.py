"""Which library the one file watcher uses: ``watchfiles`` (Rust notify, ``force_polling``) or
``inotify-simple`` + the project's own stat poll (:mod:`sidecar.runtime.watch`).

Each candidate runs in a fresh interpreter (``python -m bench.watch_choice --child NAME``) that
reports: the import's wall time and RSS, RSS and threads with three files in three folders
watched, CPU (user+sys) over an idle window, and the change-detection latency (median and
worst of ``--repeats``) of five changes: an in-place write, an atomic rename, a Kubernetes
ConfigMap ``..data`` symlink swap, and a file whose folder does not exist when the watch starts
(created later: ``mkdir -p`` then a write), each also with the candidate's polling mode.

    python -m bench.watch_choice [--idle 5] [--repeats 10] [--watchfiles-path DIR]

``--watchfiles-path``: a folder holding ``watchfiles`` (``pip install --target DIR``) when it
is not installed in the environment.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CANDIDATES = ("sidecar-inotify", "sidecar-poll", "watchfiles", "watchfiles-poll")
POLL_MS = 100


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


def _cpu_s() -> float:
    t = os.times()
    return t.user + t.system


# -- the changes -------------------------------------------------------------------------------


def _plain(d: Path) -> Path:
    f = d / "conf.yaml"
    f.write_text("a: 0\n")
    return f


def _configmap(d: Path) -> Path:
    (d / "..v0").mkdir()
    (d / "..v0" / "conf.yaml").write_text("a: 0\n")
    (d / "..data").symlink_to("..v0")
    (d / "conf.yaml").symlink_to("..data/conf.yaml")
    return d / "conf.yaml"


def _in_place(f: Path, i: int) -> None:
    f.write_text(f"a: {i}\n")


def _rename(f: Path, i: int) -> None:
    tmp = f.with_name(".conf.tmp")
    tmp.write_text(f"a: {i}\n")
    tmp.replace(f)


def _swap(f: Path, i: int) -> None:
    d = f.parent
    old = os.readlink(d / "..data")
    (d / f"..v{i}").mkdir()
    (d / f"..v{i}" / "conf.yaml").write_text(f"a: {i}\n")
    (d / "..data_tmp").symlink_to(f"..v{i}")
    (d / "..data_tmp").replace(d / "..data")
    shutil.rmtree(d / old)


CASES: dict[str, tuple[Callable[[Path], Path], Callable[[Path, int], None]]] = {
    "in_place": (_plain, _in_place),
    "rename": (_plain, _rename),
    "configmap_swap": (_configmap, _swap),
}


# -- the candidates, behind one shape: start(paths, on_change) -> stop ---------------------------

Stop = Callable[[], Any]


async def _start_sidecar(paths: list[Path], on_change: Callable[[Path], None], poll: bool) -> Stop:
    from sidecar.runtime.watch import InotifyWatcher, PollWatcher

    w = PollWatcher(paths, POLL_MS / 1000) if poll else InotifyWatcher(paths)
    await w.start(on_change)
    return w.stop


async def _start_watchfiles(paths: list[Path], on_change: Callable[[Path], None], poll: bool) -> Stop:
    import watchfiles

    folders = sorted({str(p.parent) for p in paths})
    wanted = {str(p) for p in paths}
    stop = asyncio.Event()

    async def run() -> None:
        async for changes in watchfiles.awatch(
            *folders,
            stop_event=stop,
            recursive=False,
            debounce=50,
            step=10,
            force_polling=poll,
            poll_delay_ms=POLL_MS,
        ):
            hit = {c for _, c in changes}
            for p in paths:
                name = str(p)
                if name in hit or any(Path(c).name.startswith("..") for c in hit if c not in wanted):
                    on_change(p)

    task = asyncio.ensure_future(run())
    await asyncio.sleep(1.0)  # awatch gives no "armed" signal (its first poll takes the snapshot)
    if task.done():
        task.result()  # raises what the start raised (e.g. FileNotFoundError)

    async def halt() -> None:
        stop.set()
        await task

    return halt


def _starter(name: str) -> tuple[Callable[..., Any], bool]:
    poll = name.endswith("-poll")
    return (_start_watchfiles if name.startswith("watchfiles") else _start_sidecar), poll


async def _latency(name: str, case: str, repeats: int) -> dict[str, Any]:
    start, poll = _starter(name)
    setup, change = CASES[case] if case in CASES else (None, None)
    samples: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        got = asyncio.Event()
        if setup is None:  # the folder does not exist yet
            f = d / "later" / "deeper" / "conf.yaml"
        else:
            f = setup(d)
        try:
            stop = await start([f], lambda _p: got.set(), poll)
        except Exception as exc:
            return {"error": f"{type(exc).__name__}: {exc}"}
        try:
            for i in range(1, repeats + 1):
                got.clear()
                t0 = time.perf_counter()
                if change is None:
                    f.parent.mkdir(parents=True)
                    f.write_text("a: 1\n")
                else:
                    change(f, i)
                try:
                    await asyncio.wait_for(got.wait(), 5.0)
                except TimeoutError:
                    return {"error": "not seen within 5 s", "seen": len(samples)}
                samples.append((time.perf_counter() - t0) * 1000)
                if change is None:
                    shutil.rmtree(d / "later")
                    await asyncio.sleep(0.3)  # the deletion's own event passes
                else:
                    await asyncio.sleep(0.05)
        finally:
            await stop()
    return {"median_ms": round(statistics.median(samples), 2), "max_ms": round(max(samples), 2)}


async def _idle(name: str, idle_s: float) -> dict[str, Any]:
    start, poll = _starter(name)
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for sub in ("scenario", "config", "certs"):
            (Path(tmp) / sub).mkdir()
            paths.append(_plain(Path(tmp) / sub))
        stop = await start(paths, lambda _p: None, poll)
        try:
            await asyncio.sleep(0.5)
            rss, threads = _rss_kib(), _threads()
            c0 = _cpu_s()
            await asyncio.to_thread(threading.Event().wait, idle_s)  # the loop idles too
            cpu = _cpu_s() - c0
        finally:
            await stop()
    return {"rss_watching_kib": rss, "threads": threads, "idle_cpu_pct": round(100 * cpu / idle_s, 3)}


def child(name: str, idle_s: float, repeats: int) -> dict[str, Any]:
    rss0 = _rss_kib()
    t0 = time.perf_counter()
    if name.startswith("watchfiles"):
        import watchfiles  # noqa: F401
    else:
        import inotify_simple  # noqa: F401

        import sidecar.runtime.watch  # noqa: F401
    out: dict[str, Any] = {
        "candidate": name,
        "import_ms": round((time.perf_counter() - t0) * 1000, 1),
        "import_rss_kib": _rss_kib() - rss0,
    }
    out.update(asyncio.run(_idle(name, idle_s)))
    for case in (*CASES, "folder_created_later"):
        out[case] = asyncio.run(_latency(name, case, repeats))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--idle", type=float, default=5.0)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--watchfiles-path", default="")
    ap.add_argument("--child", choices=CANDIDATES)
    ns = ap.parse_args(argv)
    if ns.watchfiles_path:
        sys.path.insert(0, ns.watchfiles_path)
    if ns.child:
        print(json.dumps(child(ns.child, ns.idle, ns.repeats)))
        return 0
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    for name in CANDIDATES:
        cmd = [sys.executable, "-m", "bench.watch_choice", "--child", name]
        cmd += ["--idle", str(ns.idle), "--repeats", str(ns.repeats)]
        if ns.watchfiles_path:
            cmd += ["--watchfiles-path", ns.watchfiles_path]
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            print(json.dumps({"candidate": name, "error": proc.stderr.strip()[-500:]}))
        else:
            print(proc.stdout.strip())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
