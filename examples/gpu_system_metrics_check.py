"""Check system metrics on a real NVIDIA GPU machine (run by hand; CI never needs a GPU).

    python examples/gpu_system_metrics_check.py
    python examples/gpu_system_metrics_check.py --record tests/support/nvml_recording.json

Starts a local MLflow server in a temporary directory (`aidp-metrics[local]`), allocates a
CUDA tensor and keeps the GPU busy with matrix products while a run with
`system_metrics=True` takes two samples, then reads the run back from the server and
prints every `system/` key with its values, next to `torch.cuda.max_memory_allocated`.
It exits 1 unless every GPU NVML sees has its memory, utilisation and power series and
the torch peak matches. `--record PATH` also writes what the NVML calls the sampler makes
returned, per device, as the recording `tests/support/nvml_fake.py` replays on machines
without a GPU.

Needs torch with CUDA, nvidia-ml-py and mlflow.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

GPU_NAMES = (
    "memory_usage_percentage",
    "memory_usage_megabytes",
    "utilization_percentage",
    "power_usage_watts",
    "power_usage_percentage",
)


def record_nvml(path: Path) -> None:
    """What nvmlDeviceGetMemoryInfo / UtilizationRates / PowerUsage / EnforcedPowerLimit
    return on each device right now (a failed call is recorded as its NVML error code)."""
    import pynvml

    def attempt(function: Any, handle: Any, convert: Any) -> Any:
        try:
            return convert(function(handle))
        except pynvml.NVMLError as exc:
            return {"error": exc.value}

    pynvml.nvmlInit()
    try:
        devices = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(handle)
            devices.append(
                {
                    "name": name.decode() if isinstance(name, bytes) else str(name),
                    "memory": attempt(
                        pynvml.nvmlDeviceGetMemoryInfo,
                        handle,
                        lambda m: {"total": m.total, "free": m.free, "used": m.used},
                    ),
                    "utilization": attempt(
                        pynvml.nvmlDeviceGetUtilizationRates,
                        handle,
                        lambda u: {"gpu": u.gpu, "memory": u.memory},
                    ),
                    "power_usage_milliwatts": attempt(pynvml.nvmlDeviceGetPowerUsage, handle, int),
                    "enforced_power_limit_milliwatts": attempt(
                        pynvml.nvmlDeviceGetEnforcedPowerLimit, handle, int
                    ),
                }
            )
        driver = pynvml.nvmlSystemGetDriverVersion()
    finally:
        pynvml.nvmlShutdown()
    recording = {
        "recorded": True,
        "note": "recorded by examples/gpu_system_metrics_check.py --record while it kept "
        "GPU 0 busy",
        "driver_version": driver.decode() if isinstance(driver, bytes) else str(driver),
        "devices": devices,
    }
    path.write_text(json.dumps(recording, indent=2) + "\n", encoding="utf-8")
    print(f"recorded {len(devices)} device(s) into {path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--record", type=Path, metavar="PATH", help="write an NVML recording")
    parser.add_argument("--interval", type=float, default=1.0, help="sampling interval (s)")
    args = parser.parse_args(argv)

    import pynvml
    import torch

    from aidp_metrics import LocalMLflowServer, MetricsClient, Run

    if not torch.cuda.is_available():
        print("FAIL: torch sees no CUDA device", file=sys.stderr)
        return 1
    pynvml.nvmlInit()
    nvml_devices = pynvml.nvmlDeviceGetCount()
    pynvml.nvmlShutdown()
    print(f"torch: {torch.cuda.device_count()} CUDA device(s); NVML: {nvml_devices} GPU(s)")

    # allocate, then work on the same buffers: the peak is reached before the first sample
    a = torch.randn(4096, 4096, device="cuda")
    b = torch.randn(4096, 4096, device="cuda")
    c = a @ b
    torch.cuda.synchronize()
    peak = [torch.cuda.max_memory_allocated(i) for i in range(torch.cuda.device_count())]

    with tempfile.TemporaryDirectory(prefix="aidp-gpu-check-") as tmp:
        server = LocalMLflowServer(Path(tmp) / "mlflow")
        server.start()
        try:
            run = Run.start(
                endpoint=server.url,
                experiment_name="aidp-metrics-gpu-check",
                system_metrics=True,
                system_metrics_interval=args.interval,
            )
            step = 0
            # the sampler samples every `interval` seconds: three intervals hold two samples
            deadline = time.monotonic() + 3 * args.interval
            while time.monotonic() < deadline:
                torch.matmul(a, b, out=c)  # keep the GPU busy between the samples
                torch.cuda.synchronize()
                step += 1
                run.log_metrics({"loss": float(c[0, 0].item())}, step=step)
            if args.record:
                record_nvml(args.record)
            run.end()
            with MetricsClient(server.url) as client:
                data = client.get_run(run.run_id).get("data", {})
                keys = sorted(
                    m["key"] for m in data.get("metrics", []) if m["key"].startswith("system/")
                )
                series = {key: client.get_metric_history(run.run_id, key) for key in keys}
        finally:
            server.stop()

    samples = max((len(points) for points in series.values()), default=0)
    print(f"\n{len(series)} system/ keys, {samples} samples:")
    for key, points in series.items():
        values = ", ".join(f"{p.value:g} @ step {p.step}" for p in points)
        print(f"  {key}: {values}")
    print("\ntorch.cuda.max_memory_allocated:")
    for i, value in enumerate(peak):
        print(f"  cuda:{i}: {value} bytes = {value / 1e6:.1f} MB")

    problems = []
    for i in range(nvml_devices):
        for name in GPU_NAMES:
            key = f"system/gpu_{i}_{name}"
            if len(series.get(key, [])) < 2:
                problems.append(f"{key}: {len(series.get(key, []))} point(s), expected 2+")
    for i, value in enumerate(peak):
        key = f"system/torch_cuda_{i}_max_memory_allocated_megabytes"
        got = [p.value for p in series.get(key, [])]
        if not got or any(abs(v - value / 1e6) > 0.051 for v in got):
            problems.append(f"{key}: {got}, expected {value / 1e6:.1f}")
    for problem in problems:
        print(f"FAIL: {problem}")
    print("OK" if not problems else f"{len(problems)} problem(s)")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
