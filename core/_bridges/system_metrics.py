"""System metrics: CPU, memory, disk, network and GPU figures next to the training curves.

One sampler thread per process serves every run that asked for system metrics
(`system_metrics=True`). It is started by the first `watch(run, interval)` and stopped (and
joined) by the `unwatch(run)` of the last one. Each run gets a sample right away and then
every `interval` seconds, logged through the run's own `log_metrics` under MLflow's names
(`system/cpu_utilization_percentage`, `system/gpu_0_utilization_percentage`, ...), at the
run's `last_step` and stamped with the time of the sample.

Sources, each optional (a missing library or device means its metrics are absent, with one
debug line): `psutil` for the machine and this process, NVML (`nvidia-ml-py`) or `amdsmi`
for GPUs, and `torch.cuda`'s peak allocation when the process has initialised CUDA. Nothing
is imported before a sampler starts, and the sampling itself runs outside every lock a run
or the training thread uses; only the hand-off to `log_metrics` (microseconds) is
serialised against `unwatch`, so that no sample reaches a run after it has ended.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from aidp_metrics._notice import notice

logger = logging.getLogger("aidp_metrics")

PREFIX = "system/"
THREAD_NAME = "aidp-metrics-system"
FIRST_WINDOW = 0.1  # seconds the first CPU percentage is measured over
JOIN_TIMEOUT = 2.0  # how long unwatch() waits for the sampler (a stuck driver call)
MB = 1e6  # MLflow's monitors divide bytes by 1e6 for "megabytes"

Reading = dict[str, float]


class Watchable(Protocol):
    """What the sampler needs from a run."""

    @property
    def run_id(self) -> str: ...

    @property
    def last_step(self) -> int: ...

    def log_system_metrics(self, metrics: Mapping[str, float], step: int, timestamp: int) -> None:
        """Like `log_metrics`, without moving `last_step` (training owns it)."""
        ...


# -- sources: each reads one library; built on the sampler thread ------------------------


class Source(Protocol):
    def read(self, sample: Sample) -> None: ...

    def close(self) -> None: ...


@dataclass
class Sample:
    """One reading of every source: gauges as they are, counters as totals (each run
    subtracts its own first value, as MLflow's network monitor does from its start)."""

    time_ms: int
    monotonic: float
    gauges: Reading = field(default_factory=dict)
    counters: Reading = field(default_factory=dict)


_debug_said: set[str] = set()


def _debug_once(topic: str, message: str) -> None:
    if topic not in _debug_said:
        _debug_said.add(topic)
        logger.debug("aidp-metrics: %s", message)


class HostSource:
    """The machine (CPU, memory, root disk, network) and this process (CPU, RSS), via psutil.

    CPU percentages are computed from `cpu_times()` deltas between two samples, as
    `psutil.cpu_percent()` does, but without sharing psutil's module-level state with
    user code that calls `cpu_percent()` itself.
    """

    def __init__(self, psutil: Any) -> None:
        self._psutil = psutil
        self._process = psutil.Process(os.getpid())
        self._cpus = psutil.cpu_count() or 1
        self._machine_last = _busy_total(psutil.cpu_times())
        self._process_last = (_process_cpu(self._process), time.monotonic())

    def read(self, sample: Sample) -> None:
        psutil, gauges = self._psutil, sample.gauges
        busy, total = _busy_total(psutil.cpu_times())
        last_busy, last_total = self._machine_last
        self._machine_last = (busy, total)
        if total > last_total:
            gauges["cpu_utilization_percentage"] = _percent(busy - last_busy, total - last_total)
        memory = psutil.virtual_memory()
        gauges["system_memory_usage_megabytes"] = memory.used / MB
        gauges["system_memory_usage_percentage"] = memory.used / memory.total * 100
        disk = psutil.disk_usage(os.sep)
        gauges["disk_usage_percentage"] = float(disk.percent)
        gauges["disk_usage_megabytes"] = disk.used / MB
        gauges["disk_available_megabytes"] = disk.free / MB
        network = psutil.net_io_counters()
        if network is not None:
            sample.counters["network_receive_megabytes"] = network.bytes_recv / MB
            sample.counters["network_transmit_megabytes"] = network.bytes_sent / MB
        used, now = _process_cpu(self._process), time.monotonic()
        last_used, last_now = self._process_last
        self._process_last = (used, now)
        if now > last_now:
            share = (used - last_used) / ((now - last_now) * self._cpus)
            gauges["process_cpu_utilization_percentage"] = _percent(share, 1.0)
        gauges["process_memory_rss_megabytes"] = self._process.memory_info().rss / MB

    def close(self) -> None:
        pass


def _busy_total(times: Any) -> tuple[float, float]:
    """(busy, total) CPU seconds, counted as psutil's cpu_percent counts them."""
    total = sum(times) - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0)
    return total - times.idle - getattr(times, "iowait", 0.0), total


def _process_cpu(process: Any) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def _percent(part: float, whole: float) -> float:
    return min(100.0, max(0.0, part / whole * 100))


class _PerDevice:
    """Calls one vendor query per device, and stops calling a query once it has failed
    there (NotSupported does not get better), with one debug line."""

    def __init__(self, vendor: str) -> None:
        self._vendor = vendor
        self._failed: set[tuple[int, str]] = set()

    def call(self, index: int, what: str, query: Callable[..., Any], *args: Any) -> Any:
        if (index, what) in self._failed:
            return None
        try:
            return query(*args)
        except Exception as exc:
            self._failed.add((index, what))
            _debug_once(
                f"{self._vendor}-{index}-{what}",
                f"{self._vendor} GPU {index}: no {what} ({exc}); not sampled again",
            )
            return None


class NvidiaSource:
    """Every GPU NVML sees (not only those in CUDA_VISIBLE_DEVICES), as MLflow's GPUMonitor."""

    def __init__(self, pynvml: Any) -> None:
        self._nvml = pynvml
        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
        self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        self._queries = _PerDevice("NVIDIA")

    def read(self, sample: Sample) -> None:
        nvml, gauges, call = self._nvml, sample.gauges, self._queries.call
        for i, handle in enumerate(self._handles):
            memory = call(i, "memory", nvml.nvmlDeviceGetMemoryInfo, handle)
            if memory is not None:
                gauges[f"gpu_{i}_memory_usage_percentage"] = memory.used / memory.total * 100
                gauges[f"gpu_{i}_memory_usage_megabytes"] = memory.used / MB
            rates = call(i, "utilization", nvml.nvmlDeviceGetUtilizationRates, handle)
            if rates is not None:
                gauges[f"gpu_{i}_utilization_percentage"] = float(rates.gpu)
            milliwatts = call(i, "power", nvml.nvmlDeviceGetPowerUsage, handle)
            if milliwatts is not None:
                gauges[f"gpu_{i}_power_usage_watts"] = milliwatts / 1000
                limit = call(i, "power limit", nvml.nvmlDeviceGetEnforcedPowerLimit, handle)
                if limit:
                    gauges[f"gpu_{i}_power_usage_percentage"] = milliwatts / limit * 100

    def close(self) -> None:
        try:
            self._nvml.nvmlShutdown()
        except Exception:
            pass


class AmdSource:
    """AMD GPUs through `amdsmi`, under the same names as NVIDIA's. Not sampled: the power
    percentage (the unit of `power_limit` differs between amdsmi releases)."""

    def __init__(self, amdsmi: Any) -> None:
        self._smi = amdsmi
        amdsmi.amdsmi_init()
        self._handles = list(amdsmi.amdsmi_get_processor_handles())
        if not self._handles:
            amdsmi.amdsmi_shut_down()
            raise RuntimeError("amdsmi found no GPU")
        self._queries = _PerDevice("AMD")

    def read(self, sample: Sample) -> None:
        smi, gauges, call = self._smi, sample.gauges, self._queries.call
        vram = smi.AmdSmiMemoryType.VRAM
        for i, handle in enumerate(self._handles):
            used = call(i, "memory", smi.amdsmi_get_gpu_memory_usage, handle, vram)
            total = call(i, "memory total", smi.amdsmi_get_gpu_memory_total, handle, vram)
            if _number(used) is not None:
                gauges[f"gpu_{i}_memory_usage_megabytes"] = float(used) / MB
                if _number(total):
                    gauges[f"gpu_{i}_memory_usage_percentage"] = float(used) / float(total) * 100
            activity = call(i, "utilization", smi.amdsmi_get_gpu_activity, handle)
            busy = _number(activity.get("gfx_activity")) if isinstance(activity, dict) else None
            if busy is not None:
                gauges[f"gpu_{i}_utilization_percentage"] = busy
            power = call(i, "power", smi.amdsmi_get_power_info, handle)
            if isinstance(power, dict):
                # MI300 and later report current_socket_power, older cards average_socket_power
                watts = _number(power.get("current_socket_power"))
                if watts is None:
                    watts = _number(power.get("average_socket_power"))
                if watts is not None:
                    gauges[f"gpu_{i}_power_usage_watts"] = watts

    def close(self) -> None:
        try:
            self._smi.amdsmi_shut_down()
        except Exception:
            pass


_UNSUPPORTED = 0xFFFFFFFF  # amdsmi sets unsupported fields to UINT32_MAX (or "N/A")


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value == _UNSUPPORTED:
        return None
    return float(value)


class TorchSource:
    """`torch.cuda.max_memory_allocated` per device: the framework's own peak, read only when
    the process has initialised CUDA (the sampler never initialises it). Indices are torch's
    (after CUDA_VISIBLE_DEVICES), hence a name apart from NVML's `gpu_{i}_...`."""

    def read(self, sample: Sample) -> None:
        torch = sys.modules.get("torch")
        cuda = getattr(torch, "cuda", None)
        if cuda is None or not cuda.is_initialized():
            return
        for i in range(cuda.device_count()):
            peak = cuda.max_memory_allocated(i)
            sample.gauges[f"torch_cuda_{i}_max_memory_allocated_megabytes"] = peak / MB

    def close(self) -> None:
        pass


def open_sources() -> list[Source]:
    """Every source whose library imports and whose device answers. Called on the sampler
    thread, so no import or driver initialisation happens on the training thread."""
    sources: list[Source] = []
    try:
        import psutil
    except ImportError:
        _debug_once(
            "psutil", 'no CPU/memory/disk/network metrics: pip install "aidp-metrics[system]"'
        )
    else:
        try:
            sources.append(HostSource(psutil))
        except Exception as exc:  # e.g. a sandbox without /proc
            _debug_once("psutil-init", f"no CPU/memory/disk/network metrics: {exc}")
    gpu = _open_gpu()
    if gpu is not None:
        sources.append(gpu)
    sources.append(TorchSource())
    return sources


def _open_gpu() -> Source | None:
    try:
        import pynvml
    except ImportError:
        _debug_once("pynvml", "no NVIDIA GPU metrics: nvidia-ml-py is not installed")
    else:
        try:
            return NvidiaSource(pynvml)
        except Exception as exc:  # NVMLError: no driver, no GPU
            _debug_once("nvml", f"no NVIDIA GPU metrics: {exc}")
    try:
        import amdsmi
    except ImportError:
        _debug_once("amdsmi", "no AMD GPU metrics: amdsmi is not installed")
        return None
    try:
        return AmdSource(amdsmi)
    except Exception as exc:
        _debug_once("amdsmi-init", f"no AMD GPU metrics: {exc}")
        return None


# -- the sampler -----------------------------------------------------------------------------


class _Watch:
    """One run the sampler serves: its cadence, its counters' baselines and its step rate."""

    def __init__(self, run: Watchable, interval: float) -> None:
        self.run = run
        self.interval = interval
        self.due = 0.0  # monotonic time of the next sample; 0: right away
        self.active = True
        self.lock = threading.Lock()  # held only around log_metrics, see deactivate()
        self._baselines: Reading = {}
        self._previous: tuple[int, float] | None = None  # (step, monotonic) of the last sample

    def metrics_for(self, sample: Sample) -> tuple[dict[str, float], int]:
        # gauges to 0.1, as MLflow's monitors round them; counters as they are (as MLflow)
        values = {name: round(value, 1) for name, value in sample.gauges.items()}
        for name, total in sample.counters.items():
            values[name] = total - self._baselines.setdefault(name, total)
        step = self.run.last_step
        if self._previous is not None:
            steps, seconds = step - self._previous[0], sample.monotonic - self._previous[1]
            if steps >= 0 and seconds > 0:  # a step going back (a new fit) has no rate
                values["steps_per_second"] = round(steps / seconds, 3)
        self._previous = (step, sample.monotonic)
        return {PREFIX + name: value for name, value in values.items()}, step

    def send(self, sample: Sample) -> None:
        metrics, step = self.metrics_for(sample)
        with self.lock:
            if self.active:
                self.run.log_system_metrics(metrics, step, sample.time_ms)

    def deactivate(self) -> None:
        """After this returns the sampler sends nothing more to the run (which may be
        ending: a late sample must not reopen it). Waits for a send in progress, bounded
        in case the run's queue blocks (`policy="block"`)."""
        acquired = self.lock.acquire(timeout=JOIN_TIMEOUT)
        self.active = False
        if acquired:
            self.lock.release()


class Sampler(threading.Thread):
    """The process's sampler thread. A daemon with `stop()`, so it never keeps the
    interpreter alive and test harnesses (Lightning's) can end it."""

    def __init__(self) -> None:
        super().__init__(name=THREAD_NAME, daemon=True)
        self._changed = threading.Condition()
        self._watches: dict[int, _Watch] = {}  # id(run) -> watch; the watch holds the run
        self._stopped = False
        self.samples = 0  # samples taken, for the benchmark

    def add(self, watch: _Watch) -> None:
        with self._changed:
            self._watches.setdefault(id(watch.run), watch)
            self._changed.notify()

    def remove(self, run: Watchable) -> tuple[_Watch | None, bool]:
        """(the run's watch, whether no run is left)."""
        with self._changed:
            watch = self._watches.pop(id(run), None)
            return watch, not self._watches

    def take_over(self, other: Sampler) -> None:
        with other._changed:
            watches = list(other._watches.values())
        for watch in watches:
            self.add(watch)

    def stop(self) -> None:
        with self._changed:
            self._stopped = True
            self._changed.notify()

    def run(self) -> None:
        sources: list[Source] = []
        try:
            opened = time.monotonic()
            sources = open_sources()  # the CPU baseline first, then the (slower) GPU libraries
            window = FIRST_WINDOW - (time.monotonic() - opened)
            with self._changed:  # the first CPU percentage needs a window to measure
                self._changed.wait_for(lambda: self._stopped, max(0.0, window))
            while True:
                due = self._wait_for_due()
                if due is None:
                    return
                sample = self._sample(sources)
                for watch in due:
                    watch.due = sample.monotonic + watch.interval
                    try:
                        watch.send(sample)
                    except Exception as exc:  # strict runs, a closing run: never kill the thread
                        _debug_once(
                            f"send-{type(exc).__name__}", f"system metrics not logged: {exc}"
                        )
        except Exception as exc:
            notice(f"aidp-metrics: system metrics stopped: {exc}")
        finally:
            for source in sources:
                source.close()

    def _wait_for_due(self) -> list[_Watch] | None:
        with self._changed:
            while not self._stopped:
                now = time.monotonic()
                due = [w for w in self._watches.values() if w.due <= now]
                if due:
                    return due
                wake = min((w.due for w in self._watches.values()), default=None)
                self._changed.wait(None if wake is None else wake - now)
            return None

    def _sample(self, sources: list[Source]) -> Sample:
        sample = Sample(time_ms=int(time.time() * 1000), monotonic=time.monotonic())
        for source in sources:
            try:
                source.read(sample)
            except Exception as exc:
                _debug_once(f"read-{type(source).__name__}", f"{type(source).__name__}: {exc}")
        self.samples += 1
        return sample


_lock = threading.Lock()
_sampler: Sampler | None = None


def watch(run: Watchable, interval: float) -> None:
    """Sample system metrics into `run` now and every `interval` seconds, until `unwatch`.
    Watching a run already watched changes nothing."""
    global _sampler
    with _lock:
        sampler = _sampler
        if sampler is None or not sampler.is_alive():
            fresh = Sampler()
            if sampler is not None:  # it died of something unexpected: keep its runs
                fresh.take_over(sampler)
            sampler = _sampler = fresh
            sampler.add(_Watch(run, interval))
            sampler.start()
        else:
            sampler.add(_Watch(run, interval))


def unwatch(run: Watchable) -> None:
    """Stop sampling into `run`; after this returns nothing more is logged into it. The
    last run's unwatch stops the sampler thread and joins it (at most JOIN_TIMEOUT)."""
    global _sampler
    with _lock:
        sampler = _sampler
        if sampler is None:
            return
        watch, empty = sampler.remove(run)
        if empty:
            _sampler = None
            sampler.stop()
    if watch is not None:
        watch.deactivate()
    if empty and sampler is not threading.current_thread() and sampler.ident is not None:
        sampler.join(JOIN_TIMEOUT)


def forget_in_child() -> None:
    """A forked child has no sampler thread; its inherited runs belong to the parent."""
    global _sampler, _lock
    _sampler = None
    _lock = threading.Lock()
