"""A recorded NVML, for machines without an NVIDIA GPU (CI): replays pynvml call results.

Only for where the hardware is absent: the tests that use it skip themselves when the real
NVML initialises. The recording (`nvml_recording.json`) holds, per device, what the NVML
calls the sampler makes returned; `examples/gpu_system_metrics_check.py --record PATH`
writes one on a GPU machine. Results come back in pynvml's own types (`c_nvmlMemory_t`,
`c_nvmlUtilization_t`, ints in milliwatts) and a recorded failure as pynvml's own
`NVMLError` subclass, so the sampler reads them exactly as it reads the real library.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

RECORDING = Path(__file__).with_name("nvml_recording.json")

# The pynvml functions the sampler (and the recorder) call, all replaced by install().
FUNCTIONS = (
    "nvmlInit",
    "nvmlShutdown",
    "nvmlDeviceGetCount",
    "nvmlDeviceGetHandleByIndex",
    "nvmlDeviceGetMemoryInfo",
    "nvmlDeviceGetUtilizationRates",
    "nvmlDeviceGetPowerUsage",
    "nvmlDeviceGetEnforcedPowerLimit",
    "nvmlDeviceGetName",
    "nvmlSystemGetDriverVersion",
)


@dataclass(frozen=True)
class Handle:
    index: int


class RecordedNVML:
    """`install()` patches the pynvml module; `calls` counts (device index, function)."""

    def __init__(self, recording: dict[str, Any], pynvml: Any) -> None:
        self.devices: list[dict[str, Any]] = recording["devices"]
        self.driver_version = str(recording.get("driver_version", ""))
        self.pynvml = pynvml
        self.calls: Counter[tuple[int, str]] = Counter()
        self.initialised = 0

    @classmethod
    def load(cls, pynvml: Any, path: Path = RECORDING) -> RecordedNVML:
        return cls(json.loads(path.read_text(encoding="utf-8")), pynvml)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        for name in FUNCTIONS:
            monkeypatch.setattr(self.pynvml, name, getattr(self, name))

    # -- the replayed functions ---------------------------------------------------------------

    def nvmlInit(self) -> None:
        self.initialised += 1

    def nvmlShutdown(self) -> None:
        self.initialised -= 1

    def nvmlDeviceGetCount(self) -> int:
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> Handle:
        if not 0 <= index < len(self.devices):
            raise self.pynvml.NVMLError(self.pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return Handle(index)

    def nvmlDeviceGetMemoryInfo(self, handle: Handle, version: object = None) -> Any:
        memory = self._result(handle, "nvmlDeviceGetMemoryInfo", "memory")
        return self.pynvml.c_nvmlMemory_t(
            total=memory["total"], free=memory["free"], used=memory["used"]
        )

    def nvmlDeviceGetUtilizationRates(self, handle: Handle) -> Any:
        rates = self._result(handle, "nvmlDeviceGetUtilizationRates", "utilization")
        return self.pynvml.c_nvmlUtilization_t(gpu=rates["gpu"], memory=rates["memory"])

    def nvmlDeviceGetPowerUsage(self, handle: Handle) -> int:
        return int(self._result(handle, "nvmlDeviceGetPowerUsage", "power_usage_milliwatts"))

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: Handle) -> int:
        key = "enforced_power_limit_milliwatts"
        return int(self._result(handle, "nvmlDeviceGetEnforcedPowerLimit", key))

    def nvmlDeviceGetName(self, handle: Handle) -> str:
        return str(self.devices[handle.index]["name"])

    def nvmlSystemGetDriverVersion(self) -> str:
        return self.driver_version

    def _result(self, handle: Handle, function: str, key: str) -> Any:
        self.calls[(handle.index, function)] += 1
        value = self.devices[handle.index][key]
        if isinstance(value, dict) and "error" in value:  # a call that failed when recorded
            raise self.pynvml.NVMLError(int(value["error"]))
        return value
