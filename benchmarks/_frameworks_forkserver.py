"""A fork server per framework: import the framework once, fork one fresh process per run.

    python -m benchmarks._frameworks_forkserver FRAMEWORK

Importing Lightning, Transformers or Keras, and what torch imports lazily on the first
optimizer step (dynamo, sympy: `warm_torch` runs one), takes seconds of CPU (much more on a
loaded machine); paying it once per framework instead of once per run is what makes enough
interleaved repetitions affordable. The server process runs no Python thread (it checks),
imports neither MLflow nor aidp_metrics, freezes its heap (`gc.freeze`) and forks a child
per job; each child sets the job's environment, runs `run_worker`, writes its JSON result
to the job's file and leaves with `os._exit` once every figure is taken and every point is
verified on the server. So every run still starts with no MLflow or aidp-metrics state, and
the framework's import is in no measurement.

Protocol (text lines): the server prints `READY <json>` once, then for every job line
(JSON: env, worker, result_path, timeout) it prints one reply line (JSON: exit, error).
The children write nothing to the protocol's stdout (their fd 1 is the server's stderr).
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any, NoReturn

from ._frameworks_workers import PRELOAD, WorkerArgs, run_worker, warm_torch

READY = "READY "
ROOT = Path(__file__).resolve().parent.parent
WAIT_POLL = 0.05


def _os_threads() -> list[str]:
    """The names of this process' OS threads (a native library may start its own, e.g.
    jemalloc's background thread, which is fork-safe)."""
    names = []
    try:
        for task in os.listdir("/proc/self/task"):
            names.append(Path(f"/proc/self/task/{task}/comm").read_text().strip())
    except OSError:
        pass
    return names


def _preload(framework: str) -> dict[str, Any]:
    import logging

    import torch

    torch.set_num_threads(1)
    for name in PRELOAD[framework]:
        importlib.import_module(name)
    warm_torch()
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    return {
        "framework": framework,
        "os_threads": _os_threads(),
        "preloaded_loggers": [m for m in ("mlflow", "aidp_metrics", "httpx") if m in sys.modules],
    }


def _child(job: dict[str, Any]) -> NoReturn:
    """In the forked process: run the job, write the result, exit at once.

    The exit skips the interpreter's teardown: by then every figure is taken and every
    point verified on the server, and tearing down a forked copy of a framework-sized heap
    (touching, hence copying, all of it) costs seconds of a shared CPU and measures nothing.
    """
    forked = time.perf_counter()
    os.dup2(2, 1)  # frameworks print to stdout; the protocol owns the server's
    os.environ.clear()
    os.environ.update(job["env"])
    code = 0
    try:
        result = run_worker(WorkerArgs(**job["worker"]))
        result["child_seconds"] = time.perf_counter() - forked
        Path(job["result_path"]).write_text(json.dumps(result), encoding="utf-8")
    except BaseException:  # reported to the parent through the exit status and the log
        import traceback

        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _wait(pid: int, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return {"exit": os.waitstatus_to_exitcode(status)}
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return {"exit": None, "error": f"run timed out after {timeout:.0f} s"}
        time.sleep(WAIT_POLL)


def serve(framework: str) -> NoReturn:
    """The server loop: one forked child per job line, one reply line per job."""
    protocol = sys.stdout
    sys.stdout = sys.stderr
    info = _preload(framework)
    # Copy-on-write friendly forks: the children's collections skip the preloaded heap.
    gc.collect()
    gc.freeze()
    if threading.active_count() != 1:  # a Python thread would not survive the fork
        print(f"warning: fork server has threads {threading.enumerate()}", file=sys.stderr)
    print(READY + json.dumps(info), file=protocol, flush=True)
    for line in sys.stdin:
        job = json.loads(line)
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(job)  # never returns
        print(json.dumps(_wait(pid, float(job["timeout"]))), file=protocol, flush=True)
    # No interpreter teardown either: freeing a framework-sized heap takes a second or more
    # of CPU (more on a loaded machine) and the parent waits for this exit.
    sys.stderr.flush()
    os._exit(0)


class ForkServer:
    """Parent side: start the server for one framework, run jobs one at a time, stop."""

    def __init__(self, framework: str, env: dict[str, str], log_path: Path) -> None:
        self.framework = framework
        self.log_path = log_path
        self._log: IO[str] = log_path.open("a", encoding="utf-8")
        self._process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks._frameworks_forkserver", framework],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        line = self._readline()
        if not line.startswith(READY):
            self.close()
            raise RuntimeError(f"fork server for {framework} failed:\n{self.log_tail()}")
        self.info: dict[str, Any] = json.loads(line[len(READY) :])

    def _readline(self) -> str:
        assert self._process.stdout is not None
        return self._process.stdout.readline()

    def run(self, job: dict[str, Any]) -> dict[str, Any]:
        """One run in a fresh forked process: the worker's result, or {"error": ...}."""
        assert self._process.stdin is not None
        result_path = Path(job["result_path"])
        self._process.stdin.write(json.dumps(job) + "\n")
        self._process.stdin.flush()
        line = self._readline()
        if not line:
            return {"error": "fork server exited", "stderr_tail": self.log_tail()}
        reply: dict[str, Any] = json.loads(line)
        if reply.get("exit") != 0 or not result_path.exists():
            return {
                "error": reply.get("error", f"exit {reply.get('exit')}"),
                "stderr_tail": self.log_tail(),
            }
        result: dict[str, Any] = json.loads(result_path.read_text(encoding="utf-8"))
        result_path.unlink()
        return result

    def log_tail(self, size: int = 3000) -> str:
        self._log.flush()
        return self.log_path.read_text(encoding="utf-8", errors="replace")[-size:]

    def close(self) -> None:
        if self._process.stdin is not None and not self._process.stdin.closed:
            self._process.stdin.close()
        try:
            self._process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        if self._process.stdout is not None:
            self._process.stdout.close()
        self._log.close()

    def __enter__(self) -> ForkServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


if __name__ == "__main__":
    serve(sys.argv[1])
