"""Helpers shared by the benchmarks: a local MLflow server, timing, RSS, tables and JSON.

Benchmarks print numbers next to their goals; nothing here ever fails on a goal.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aidp_metrics.cli._local_server import LocalMLflowServer

# -- the server -----------------------------------------------------------------------------


@contextlib.contextmanager
def local_server(prefix: str = "aidp-bench-") -> Iterator[LocalMLflowServer]:
    """A started `LocalMLflowServer` (sqlite, 1 worker, 127.0.0.1) in a fresh temp dir.

    Stopped and its directory removed on exit (a server the benchmark already stopped is
    fine).
    """
    with tempfile.TemporaryDirectory(prefix=prefix) as directory:
        server = LocalMLflowServer(Path(directory))
        server.start()
        try:
            yield server
        finally:
            server.stop()


class ExternalServer:
    """A tracking server someone else runs (`--tracking-uri`): a benchmark logs to it and
    never stops it. `directory` is a fresh temp dir for what the benchmark writes (a spool)."""

    def __init__(self, url: str, directory: Path) -> None:
        self.url = url.rstrip("/")
        self.directory = directory


BenchServer = LocalMLflowServer | ExternalServer


@contextlib.contextmanager
def tracking_server(url: str | None, prefix: str = "aidp-bench-") -> Iterator[BenchServer]:
    """`local_server(prefix)`, or the server at `url` when one is given."""
    if url is None:
        with local_server(prefix) as server:
            yield server
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as directory:
        yield ExternalServer(url, Path(directory))


def server_line(server_url: str | None) -> str:
    """The header line that says which server the numbers come from."""
    if server_url is None:
        return "server   LocalMLflowServer: mlflow server, sqlite, 1 worker, 127.0.0.1"
    return f"server   {server_url} (--tracking-uri; not started by the benchmark)"


# -- sizes and common options ---------------------------------------------------------------


def add_common_options(parser: argparse.ArgumentParser, *, quick: str, smoke: str) -> None:
    """--quick / --smoke (exclusive; neither: full size), --tracking-uri and --json."""
    sizes = parser.add_mutually_exclusive_group()
    sizes.add_argument("--quick", action="store_true", help=quick)
    sizes.add_argument("--smoke", action="store_true", help=smoke)
    parser.add_argument(
        "--tracking-uri",
        metavar="URL",
        help="log to this running MLflow server instead of starting a local one (the test "
        "suite's smoke runs use its session server); default: start one",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")


def size_name(args: argparse.Namespace) -> str:
    """'smoke', 'quick' or 'full', from the options `add_common_options` added."""
    return "smoke" if args.smoke else "quick" if args.quick else "full"


def size_suffix(size: str) -> str:
    """What a benchmark's title says about its size: '' at full size."""
    return "" if size == "full" else f" (--{size})"


# -- timing ---------------------------------------------------------------------------------


@dataclass
class Timer:
    """`with Timer() as t: ...` then `t.seconds` (wall clock) and `t.cpu_seconds` (this
    thread's CPU time, which excludes time spent waiting for the GIL or the kernel)."""

    seconds: float = 0.0
    cpu_seconds: float = 0.0
    _start: float = 0.0
    _cpu_start: float = 0.0

    def __enter__(self) -> Timer:
        self._cpu_start = time.thread_time()
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._start
        self.cpu_seconds = time.thread_time() - self._cpu_start


@dataclass(frozen=True)
class Repeated:
    """Per-repetition values of one measurement (already divided into per-unit figures)."""

    values: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def best(self) -> float:
        return min(self.values)

    @property
    def worst(self) -> float:
        return max(self.values)

    def to_json(self) -> dict[str, Any]:
        """The figures; None for a measurement that got no value (e.g. a follower that had
        nothing to read during a short loop)."""
        if not self.values:
            return {"median": None, "min": None, "max": None, "values": []}
        return {
            "median": self.median,
            "min": self.best,
            "max": self.worst,
            "values": list(self.values),
        }


def repeat(
    measure: Callable[[], float],
    repetitions: int,
    *,
    between: Callable[[], object] | None = None,
    collect: bool = True,
) -> Repeated:
    """Call `measure` (which returns one figure) `repetitions` times; `between` runs
    untimed after every repetition (e.g. wait for a queue to drain). With `collect`, the
    garbage collector runs before each repetition and stays off while it is measured."""
    values: list[float] = []
    for _ in range(repetitions):
        if collect:
            gc.collect()
            gc.disable()
        try:
            values.append(measure())
        finally:
            if collect:
                gc.enable()
        if between is not None:
            between()
    return Repeated(tuple(values))


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


# -- memory ---------------------------------------------------------------------------------


def _status_kib(field_name: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def rss_bytes() -> int:
    """The current resident set size (VmRSS); the peak from getrusage where /proc is
    missing."""
    kib = _status_kib("VmRSS")
    if kib is not None:
        return kib * 1024
    return peak_rss_bytes()


def peak_rss_bytes() -> int:
    """The process' peak resident set size (VmHWM, or getrusage's maxrss)."""
    kib = _status_kib("VmHWM")
    if kib is not None:
        return kib * 1024
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux: write 5 to /proc/self/clear_refs).

    Returns False where that is not possible; the peak then includes earlier work.
    """
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as refs:
            refs.write("5")
    except OSError:
        return False
    return True


def release_free_memory() -> bool:
    """Give free heap memory back to the OS (glibc `malloc_trim`), so that a later RSS
    delta counts new allocations rather than reused free space. False where unavailable."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        return False
    return True


MB = 1024 * 1024


# -- the machine ----------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def load_average() -> tuple[float, float, float] | None:
    try:
        return os.getloadavg()
    except OSError:
        return None


def machine_info() -> dict[str, Any]:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    versions: dict[str, str] = {}
    for name in ("aidp_metrics", "mlflow", "httpx"):
        try:
            from importlib.metadata import version

            versions[name] = version(name.replace("_", "-"))
        except Exception:
            versions[name] = "?"
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu_model": cpu_model(),
        "cores": os.cpu_count() or 0,
        "usable_cores": usable,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "load_average": load_average(),
        "versions": versions,
    }


def print_header(title: str, info: dict[str, Any], extra: Sequence[str] = ()) -> None:
    load = info.get("load_average")
    load_text = " ".join(f"{x:.2f}" for x in load) if load else "n/a"
    versions = ", ".join(f"{k} {v}" for k, v in info.get("versions", {}).items())
    lines = [
        title,
        f"date     {info['date']}",
        f"machine  {info['cpu_model']}, {info['cores']} cores ({info['usable_cores']} usable), "
        f"{info['platform']}",
        f"python   {info['implementation']} {info['python']}; {versions}",
        f"load     {load_text} (1/5/15 min) at start",
        *extra,
    ]
    width = max(len(line) for line in lines)
    print("=" * width)
    for line in lines:
        print(line)
    print("=" * width, flush=True)


# -- results --------------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the results table. `met` is informational only."""

    name: str
    measured: str
    goal: str
    ratio: str
    met: bool | None = None
    values: dict[str, Any] = field(default_factory=dict)


def print_table(rows: Sequence[Row], title: str = "") -> None:
    headers = ("benchmark", "measured", "goal", "ratio", "goal met")
    cells = [
        (r.name, r.measured, r.goal, r.ratio, "-" if r.met is None else ("yes" if r.met else "NO"))
        for r in rows
    ]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    rule = "+".join("-" * (w + 2) for w in widths)
    if title:
        print(f"\n{title}")
    print(rule)
    print("|".join(f" {h:<{w}} " for h, w in zip(headers, widths, strict=True)))
    print(rule)
    for cell in cells:
        print("|".join(f" {c:<{w}} " for c, w in zip(cell, widths, strict=True)))
    print(rule, flush=True)


def write_json(path: str | os.PathLike[str], data: dict[str, Any]) -> None:
    target = Path(path)
    if target.parent and not target.parent.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(data, indent=2, default=_json_default) + "\n", encoding="utf-8")


def _json_default(value: object) -> Any:
    to_json = getattr(value, "to_json", None)
    if callable(to_json):  # Repeated, and any other figure that knows its JSON form
        return to_json()
    if isinstance(value, Row):
        return asdict(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def log(message: str) -> None:
    """Progress on stderr, so stdout keeps only the header and the table."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- formatting -----------------------------------------------------------------------------


def fmt_seconds(seconds: float) -> str:
    """A duration per unit with a sensible SI prefix."""
    if seconds >= 1.0:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    if seconds >= 1e-6:
        return f"{seconds * 1e6:.2f} µs"
    return f"{seconds * 1e9:.0f} ns"


def fmt_rate(per_second: float, unit: str = "metrics/s") -> str:
    return f"{per_second:,.0f} {unit}"


def fmt_times(ratio: float) -> str:
    return f"{ratio:,.0f}x" if ratio >= 100 else f"{ratio:,.1f}x"


# -- grids ----------------------------------------------------------------------------------


def print_grid(headers: Sequence[str], rows: Sequence[Sequence[str]], title: str = "") -> None:
    """A plain text table with a header and left-aligned cells (for free-form results)."""
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    rule = "+".join("-" * (w + 2) for w in widths)
    if title:
        print(f"\n{title}")
    print(rule)
    print("|".join(f" {h:<{w}} " for h, w in zip(headers, widths, strict=True)))
    print(rule)
    for row in rows:
        print("|".join(f" {c:<{w}} " for c, w in zip(row, widths, strict=True)))
    print(rule, flush=True)
