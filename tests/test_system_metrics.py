"""System metrics: MLflow's `system/` names, cadence, ranges and the sampler's lifetime,
read back from the real MLflow server. The GPU path runs against a recorded NVML only on
machines without an NVIDIA GPU (`tests/support/nvml_fake.py`); on a GPU machine
`examples/gpu_system_metrics_check.py` checks the real one."""

from __future__ import annotations

import itertools
import logging
import os
import re
import subprocess
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from aidp_metrics import (
    AIDPMetricsWarning,
    ConfigurationError,
    DeliveryOptions,
    Run,
)
from aidp_metrics._bridges import system_metrics
from tests.support.mlflow_server import MLflowServer, get_metric_history, get_run
from tests.support.nvml_fake import RecordedNVML

ROOT = Path(__file__).resolve().parent.parent

# Exactly what MLflow's CPUMonitor, DiskMonitor and NetworkMonitor log (mlflow 3.17).
MLFLOW_HOST_KEYS = {
    "system/cpu_utilization_percentage",
    "system/system_memory_usage_megabytes",
    "system/system_memory_usage_percentage",
    "system/disk_usage_percentage",
    "system/disk_usage_megabytes",
    "system/disk_available_megabytes",
    "system/network_receive_megabytes",
    "system/network_transmit_megabytes",
}
OWN_KEYS = {
    "system/process_cpu_utilization_percentage",
    "system/process_memory_rss_megabytes",
    "system/steps_per_second",
}
DEVICE_KEY = re.compile(r"^system/(gpu_\d+_|torch_cuda_\d+_)")


@pytest.fixture(autouse=True)
def _no_switch_in_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("AIDP_METRICS_SYSTEM_METRICS", raising=False)
    monkeypatch.delenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", raising=False)
    yield
    assert not sampler_threads(), "a test left the sampler thread running"


@pytest.fixture
def url(mlflow_server: MLflowServer) -> str:
    mlflow_server.start()
    return mlflow_server.url


def sampler_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == system_metrics.THREAD_NAME]


def system_series(url: str, run_id: str) -> dict[str, list[dict[str, Any]]]:
    """Every `system/` key of the run with its points in time order, from the server."""
    metrics = get_run(url, run_id)["data"].get("metrics", [])
    keys = sorted({m["key"] for m in metrics if m["key"].startswith("system/")})
    return {
        key: sorted(get_metric_history(url, run_id, key), key=lambda m: int(m["timestamp"]))
        for key in keys
    }


def wait_until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


# -- names, cadence, values -----------------------------------------------------------------


def test_mlflow_names_at_the_interval_with_values_in_range(url: str, fresh_experiment: str) -> None:
    import psutil

    interval = 0.25
    began = time.monotonic()
    run = Run.start(
        experiment_name=fresh_experiment,
        endpoint=url,
        system_metrics=True,
        system_metrics_interval=interval,
    )
    logged_steps = {0}
    step = 0
    while time.monotonic() - began < 1.5:
        step += 1
        run.log_metrics({"loss": 1.0 / step}, step=step)
        logged_steps.add(step)
        time.sleep(0.01)
    run.end()
    open_seconds = time.monotonic() - began
    assert not sampler_threads()

    series = system_series(url, run.run_id)
    host = {key: points for key, points in series.items() if not DEVICE_KEY.match(key)}
    assert set(host) == MLFLOW_HOST_KEYS | OWN_KEYS

    # one sample at start, then one per interval at most
    stamps = [int(m["timestamp"]) for m in host["system/cpu_utilization_percentage"]]
    assert 2 <= len(stamps) <= open_seconds / interval + 1
    assert all(
        later - earlier >= interval * 1000 - 5 for earlier, later in itertools.pairwise(stamps)
    )
    for key, points in host.items():
        expected = stamps[1:] if key == "system/steps_per_second" else stamps
        assert [int(m["timestamp"]) for m in points] == expected, key

    # each sample lands on the step the run had reached, never ahead of training
    steps = [int(m["step"]) for m in host["system/cpu_utilization_percentage"]]
    assert steps == sorted(steps)
    assert set(steps) <= logged_steps

    # steps_per_second is the step delta over the time between two samples
    rates = [float(m["value"]) for m in host["system/steps_per_second"]]
    for k, rate in enumerate(rates, start=1):
        seconds = (stamps[k] - stamps[k - 1]) / 1000
        assert rate == pytest.approx((steps[k] - steps[k - 1]) / seconds, rel=0.05, abs=0.01)
    assert max(rates) > 0

    def values(key: str) -> list[float]:
        return [float(m["value"]) for m in host[f"system/{key}"]]

    for key in (
        "cpu_utilization_percentage",
        "system_memory_usage_percentage",
        "disk_usage_percentage",
        "process_cpu_utilization_percentage",
    ):
        assert all(0 <= v <= 100 for v in values(key)), key
    total_mb = psutil.virtual_memory().total / 1e6
    assert all(0 < v <= total_mb for v in values("system_memory_usage_megabytes"))
    disk = psutil.disk_usage(os.sep)
    for key in ("disk_usage_megabytes", "disk_available_megabytes"):
        assert all(0 < v <= disk.total / 1e6 for v in values(key)), key
    for key in ("network_receive_megabytes", "network_transmit_megabytes"):
        assert values(key)[0] == 0.0, key  # counted from the run's first sample
        assert all(v >= 0 for v in values(key)), key
    rss_now = psutil.Process().memory_info().rss / 1e6  # this process is the training process
    assert all(0.5 * rss_now <= v <= 2 * rss_now for v in values("process_memory_rss_megabytes"))


def test_first_sample_right_at_start_via_mlflow_variable(
    url: str, fresh_experiment: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "true")
    run = Run.start(experiment_name=fresh_experiment, endpoint=url, system_metrics_interval=30)
    assert run.options.system_metrics is True
    wait_until(lambda: run.stats.logged > 0)  # long before the 30 s interval
    assert len(sampler_threads()) == 1
    run.end()
    assert not sampler_threads()
    series = system_series(url, run.run_id)
    assert set(series) >= MLFLOW_HOST_KEYS
    assert all([int(m["step"]) for m in points] == [0] for points in series.values())


@pytest.mark.parametrize("environment", [None, "true"])
def test_no_system_key_without_the_option(
    url: str,
    fresh_experiment: str,
    monkeypatch: pytest.MonkeyPatch,
    environment: str | None,
) -> None:
    options: dict[str, Any] = {"system_metrics_interval": 0.05}
    if environment is not None:  # the explicit argument wins over the environment
        monkeypatch.setenv("AIDP_METRICS_SYSTEM_METRICS", environment)
        options["system_metrics"] = False
    run = Run.start(experiment_name=fresh_experiment, endpoint=url, **options)
    for step in range(5):
        run.log_metrics({"loss": 0.5}, step=step)
        time.sleep(0.05)
        assert not sampler_threads()
    run.end()
    keys = {m["key"] for m in get_run(url, run.run_id)["data"]["metrics"]}
    assert keys == {"loss"}


def test_switches_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert DeliveryOptions().system_metrics is False
    assert DeliveryOptions().system_metrics_interval == 10.0
    monkeypatch.setenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "True")
    assert DeliveryOptions().system_metrics is True
    monkeypatch.setenv("AIDP_METRICS_SYSTEM_METRICS", "false")  # ours first
    assert DeliveryOptions().system_metrics is False
    assert DeliveryOptions(system_metrics=True).system_metrics is True
    monkeypatch.setenv("AIDP_METRICS_SYSTEM_METRICS", "sometimes")
    with pytest.warns(AIDPMetricsWarning, match="AIDP_METRICS_SYSTEM_METRICS='sometimes'"):
        assert DeliveryOptions().system_metrics is False
    monkeypatch.delenv("AIDP_METRICS_SYSTEM_METRICS")
    for bad in (0, -1.0, float("nan")):
        with pytest.raises(ConfigurationError, match="system_metrics_interval"):
            DeliveryOptions(system_metrics_interval=bad)


# -- the sampler's lifetime -----------------------------------------------------------------


def test_one_thread_for_all_runs_gone_when_the_last_ends_and_back_on_reopen(
    url: str, fresh_experiment: str
) -> None:
    options: dict[str, Any] = {"system_metrics": True, "system_metrics_interval": 0.05}
    first = Run.start(experiment_name=fresh_experiment, endpoint=url, **options)
    second = Run.start(experiment_name=fresh_experiment, endpoint=url, **options)
    wait_until(lambda: first.stats.logged > 0 and second.stats.logged > 0)
    assert len(sampler_threads()) == 1
    thread = sampler_threads()[0]
    assert thread.daemon  # Lightning's thread police: a daemon with a stop() method
    assert callable(getattr(thread, "stop", None))
    first.end()
    assert sampler_threads() == [thread]
    second.end()
    assert not sampler_threads()

    # an ended run gets no late sample: it stays FINISHED on the server
    logged = first.stats.logged
    time.sleep(0.3)
    assert first.stats.logged == logged
    assert get_run(url, first.run_id)["info"]["status"] == "FINISHED"

    # logging after end() reopens the run, and sampling with it, from a first sample on
    first.log_metrics({"loss": 1.0}, step=7)
    wait_until(lambda: first.stats.logged > logged + 1)
    assert len(sampler_threads()) == 1
    first.end()
    assert not sampler_threads()
    cpu = system_series(url, first.run_id)["system/cpu_utilization_percentage"]
    assert int(cpu[-1]["step"]) == 7


def test_importing_loads_no_sampling_library() -> None:
    code = (
        "import sys\n"
        "import aidp_metrics._run.run, aidp_metrics._bridges.system_metrics\n"
        "from aidp_metrics import DeliveryOptions\n"
        "DeliveryOptions(system_metrics=True)\n"
        "loaded = [m for m in ('psutil', 'pynvml', 'amdsmi', 'torch') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False
    )
    assert result.returncode == 0, result.stderr


def test_missing_libraries_leave_their_metrics_out_with_one_debug_line(
    url: str,
    fresh_experiment: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    for library in ("psutil", "pynvml", "amdsmi"):
        monkeypatch.setitem(sys.modules, library, None)  # import fails as if not installed
    monkeypatch.setattr(system_metrics, "_debug_said", set())
    caplog.set_level(logging.DEBUG, logger="aidp_metrics")
    options: dict[str, Any] = {"system_metrics": True, "system_metrics_interval": 0.05}
    for round_ in range(2):  # a second sampler says nothing again
        run = Run.start(experiment_name=fresh_experiment, endpoint=url, **options)
        for step in range(1, 20):
            run.log_metrics({"loss": 0.5}, step=step + 100 * round_)
            time.sleep(0.01)
        run.end()
        assert set(system_series(url, run.run_id)) == {"system/steps_per_second"}
    # (each run's start also says where its page is, at INFO: not about libraries)
    lines = [r for r in caplog.records if r.name == "aidp_metrics" and r.levelno < logging.INFO]
    assert [r.levelno for r in lines] == [logging.DEBUG] * 3, [r.getMessage() for r in lines]
    assert 'pip install "aidp-metrics[system]"' in lines[0].getMessage()
    assert "nvidia-ml-py" in lines[1].getMessage()
    assert "amdsmi" in lines[2].getMessage()


# -- GPUs, without one ------------------------------------------------------------------------


def _skip_if_a_real_gpu() -> Any:
    pynvml = pytest.importorskip("pynvml")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return pynvml
    pynvml.nvmlShutdown()
    pytest.skip("a real NVIDIA GPU is here: examples/gpu_system_metrics_check.py checks it")


def test_gpu_metrics_from_a_recorded_nvml_without_a_gpu(
    url: str, fresh_experiment: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hardware fake: only runs where NVML finds no GPU (skipped on a GPU machine)."""
    pynvml = _skip_if_a_real_gpu()
    nvml = RecordedNVML.load(pynvml)
    nvml.devices[1]["power_usage_milliwatts"] = {"error": pynvml.NVML_ERROR_NOT_SUPPORTED}
    nvml.install(monkeypatch)
    torch = pytest.importorskip("torch")
    peaks = [123_456_789, 0]
    if not torch.cuda.is_available():  # the framework's view, faked the same way
        monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
        monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda i: peaks[i])

    run = Run.start(
        experiment_name=fresh_experiment,
        endpoint=url,
        system_metrics=True,
        system_metrics_interval=0.1,
    )
    wait_until(lambda: nvml.calls[(0, "nvmlDeviceGetPowerUsage")] >= 3)
    run.end()
    assert nvml.initialised == 0  # nvmlShutdown when the sampler stopped

    series = system_series(url, run.run_id)
    samples = len(series["system/cpu_utilization_percentage"])
    expected: dict[str, float] = {}
    for i, device in enumerate(nvml.devices):
        memory = device["memory"]
        expected[f"system/gpu_{i}_memory_usage_percentage"] = round(
            memory["used"] / memory["total"] * 100, 1
        )
        expected[f"system/gpu_{i}_memory_usage_megabytes"] = round(memory["used"] / 1e6, 1)
        expected[f"system/gpu_{i}_utilization_percentage"] = device["utilization"]["gpu"]
    power = nvml.devices[0]["power_usage_milliwatts"]
    limit = nvml.devices[0]["enforced_power_limit_milliwatts"]
    expected["system/gpu_0_power_usage_watts"] = round(power / 1000, 1)
    expected["system/gpu_0_power_usage_percentage"] = round(power / limit * 100, 1)
    if not torch.cuda.is_available():
        for i, peak in enumerate(peaks):
            expected[f"system/torch_cuda_{i}_max_memory_allocated_megabytes"] = round(peak / 1e6, 1)
    gpu = {key: points for key, points in series.items() if DEVICE_KEY.match(key)}
    assert set(gpu) == set(expected)  # GPU 1 has no power metrics: NotSupported
    for key, points in gpu.items():
        assert [float(m["value"]) for m in points] == [expected[key]] * samples, key
    # a query that failed once is not asked again on that device
    assert nvml.calls[(1, "nvmlDeviceGetPowerUsage")] == 1
    # every sample read it once (a sample read just as the run ended is not sent)
    assert nvml.calls[(0, "nvmlDeviceGetPowerUsage")] in (samples, samples + 1)


def test_the_check_script_records_what_the_fake_replays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The recorder of examples/gpu_system_metrics_check.py writes the fake's format."""
    pynvml = _skip_if_a_real_gpu()
    nvml = RecordedNVML.load(pynvml)
    nvml.devices[1]["power_usage_milliwatts"] = {"error": pynvml.NVML_ERROR_NOT_SUPPORTED}
    nvml.install(monkeypatch)
    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    import gpu_system_metrics_check

    written = tmp_path / "recording.json"
    gpu_system_metrics_check.record_nvml(written)
    replayed = RecordedNVML.load(pynvml, written)
    assert replayed.devices == nvml.devices
    assert nvml.initialised == 0


def test_amd_gpu_metrics_through_amdsmi_without_a_gpu(
    url: str, fresh_experiment: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hardware fake shaped after AMD's documented amdsmi Python API (not recorded: no AMD
    GPU was at hand); only where neither NVML nor amdsmi finds a device."""
    _skip_if_a_real_gpu()
    try:
        import amdsmi  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("amdsmi is installed here")
    vram = object()
    fake = types.SimpleNamespace(
        AmdSmiMemoryType=types.SimpleNamespace(VRAM=vram),
        amdsmi_init=lambda: None,
        amdsmi_shut_down=lambda: None,
        amdsmi_get_processor_handles=lambda: ["gpu0"],
        amdsmi_get_gpu_memory_usage=lambda h, kind: 20_000_000_000 if kind is vram else 0,
        amdsmi_get_gpu_memory_total=lambda h, kind: 200_000_000_000 if kind is vram else 0,
        amdsmi_get_gpu_activity=lambda h: {
            "gfx_activity": 93,
            "umc_activity": 40,
            "mm_activity": 0,
        },
        amdsmi_get_power_info=lambda h: {
            "current_socket_power": 512,
            "average_socket_power": "N/A",
            "power_limit": 750,
        },
    )
    monkeypatch.setitem(sys.modules, "amdsmi", fake)
    run = Run.start(
        experiment_name=fresh_experiment,
        endpoint=url,
        system_metrics=True,
        system_metrics_interval=30,
    )
    wait_until(lambda: run.stats.logged > 0)
    run.end()
    series = system_series(url, run.run_id)
    gpu = {k: float(p[0]["value"]) for k, p in series.items() if k.startswith("system/gpu_")}
    assert gpu == {
        "system/gpu_0_memory_usage_megabytes": 20_000.0,
        "system/gpu_0_memory_usage_percentage": 10.0,
        "system/gpu_0_utilization_percentage": 93.0,
        "system/gpu_0_power_usage_watts": 512.0,
    }


# -- ranks ------------------------------------------------------------------------------------
# Under Lightning's ddp_spawn only the logging rank samples: shown by the ddp_spawn job of
# tests/integrations/test_lightning_processes.py (one job proves that and the rank-0 run).
# A forked child samples nothing: test_a_forked_child_does_not_sample below.


# -- plotting ---------------------------------------------------------------------------------


def test_plot_draws_system_metrics_in_their_own_panel(tmp_path: Path) -> None:
    from aidp_metrics.cli._plot import render_chart, split_system, write_png

    series = {
        "loss": [(0, 1.0), (10, 0.5), (20, 0.25)],
        "system/cpu_utilization_percentage": [(0, 35.0), (10, 80.0), (20, 75.0)],
    }
    assert split_system(series) == (
        {"loss": series["loss"]},
        {"system/cpu_utilization_percentage": series["system/cpu_utilization_percentage"]},
    )
    chart = render_chart(series, width=60, height=6, unicode=False)
    assert chart.count("+---") == 2  # two charts, one per scale
    assert chart.index("loss: 3 points") < chart.index("system/cpu_utilization_percentage")
    assert "80" in chart
    pytest.importorskip("matplotlib")
    image = tmp_path / "curves.png"
    write_png(series, image, title="run x")
    assert image.stat().st_size > 0


def test_a_forked_child_does_not_sample(url: str, fresh_experiment: str) -> None:
    run = Run.start(
        experiment_name=fresh_experiment,
        endpoint=url,
        system_metrics=True,
        system_metrics_interval=0.05,
    )
    wait_until(lambda: run.stats.logged > 0)
    pid = os.fork()
    if pid == 0:  # the child: no sampler thread, none started for the inherited run
        run.log_metrics({"loss": 1.0}, step=1)
        time.sleep(0.2)
        alive = system_metrics._sampler is not None or bool(sampler_threads())
        os._exit(1 if alive else 0)
    _, status = os.waitpid(pid, 0)
    run.end()
    assert os.waitstatus_to_exitcode(status) == 0


# -- the benchmark ---------------------------------------------------------------------------


@pytest.mark.slow
def test_benchmark_reports_the_training_thread_and_the_sampler(mlflow_server: MLflowServer) -> None:
    from benchmarks.bench_system_metrics import bench_system_metrics, build_rows

    mlflow_server.start()
    result = bench_system_metrics(mlflow_server, size="smoke")
    assert result["complete"]
    assert result["samples"] > 0
    assert len(result["cpu_per_step_on"].values) == len(result["cpu_per_step_off"].values) == 1
    assert [row.name.strip()[:14] for row in build_rows(result)] == [
        "system metrics",
        "training-threa",
        "sampler thread",
    ]
