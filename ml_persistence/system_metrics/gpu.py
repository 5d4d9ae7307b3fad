"""The GPUs this process uses, read through NVIDIA's management library (``pynvml``, from nvidia-ml-py).

Which GPUs: those $CUDA_VISIBLE_DEVICES names when it is set (indices as nvidia-smi numbers them,
or GPU-UUIDs or unique prefixes of them; reading stops at the first entry CUDA would not take as a
whole GPU, such as -1 or a MIG instance), else those NVML lists this process on, looked for at
every sample until found. Names carry nvidia-smi's index: ``gpu2/utilization_percent``.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, Optional, Sequence

from .host import MB

log = logging.getLogger("ml_persistence")


def open_gpus() -> Optional["GpuProbe"]:
    """Return a probe over the GPUs this process uses, or None (no pynvml, no driver, no GPU of ours)."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # pynvml.NVMLError: no driver or no device; GPUs are optional
        log.debug("ml_persistence: system metrics without GPUs: NVML did not start: %s", exc)
        return None
    try:
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        chosen = selected_devices(os.environ.get("CUDA_VISIBLE_DEVICES"), pynvml, handles)
    except Exception as exc:
        log.debug("ml_persistence: system metrics without GPUs: %s", exc)
        chosen, handles = [], []
    if not handles or chosen == []:
        _shutdown(pynvml)
        return None
    return GpuProbe(pynvml, handles, chosen)


def selected_devices(visible: Optional[str], nvml: Any, handles: Sequence[Any]) -> Optional[list[int]]:
    """Return the NVML indices ``visible`` (CUDA_VISIBLE_DEVICES) names, in order; None when it is unset."""
    if visible is None:
        return None
    chosen: list[int] = []
    uuids: Optional[list[str]] = None
    for entry in (e.strip() for e in visible.split(",")):
        if entry.isdigit():
            index = int(entry)
        elif entry.lower().startswith("gpu-"):
            uuids = uuids if uuids is not None else [_text(nvml.nvmlDeviceGetUUID(h)).lower() for h in handles]
            matches = [i for i, uuid in enumerate(uuids) if uuid.startswith(entry.lower())]
            index = matches[0] if len(matches) == 1 else -1
        else:
            break
        if not 0 <= index < len(handles) or index in chosen:
            break  # as CUDA: the devices before an invalid entry stay visible, none after it
        chosen.append(index)
    return chosen


class GpuProbe:
    """Reads utilization, memory, temperature and power of each GPU in use (whole-device figures)."""

    def __init__(self, nvml: Any, handles: Sequence[Any], chosen: Optional[list[int]]) -> None:
        self._nvml = nvml
        self._handles = list(handles)
        self._by_pid = chosen is None
        self._in_use: list[int] = [] if chosen is None else list(chosen)
        self._unsupported: set[tuple[int, str]] = set()
        self._pid = os.getpid()
        self._error = getattr(nvml, "NVMLError", Exception)

    @property
    def devices(self) -> list[int]:
        """The NVML indices sampled so far."""
        return list(self._in_use)

    def sample(self) -> dict[str, float]:
        """Return {"gpu<N>/<name>": value} for each GPU in use; a figure the device does not support is left out."""
        if self._by_pid:
            self._find_ours()
        values: dict[str, float] = {}
        for index in self._in_use:
            handle = self._handles[index]
            for field, read in self.FIELDS:
                if (index, field) in self._unsupported:
                    continue
                try:
                    values.update({f"gpu{index}/{name}": value for name, value in read(self, handle).items()})
                except self._error:
                    self._unsupported.add((index, field))
        return values

    def close(self) -> None:
        """Release NVML (idempotent)."""
        nvml, self._nvml = self._nvml, None
        if nvml is not None:
            _shutdown(nvml)

    def _find_ours(self) -> None:
        for index, handle in enumerate(self._handles):
            if index in self._in_use:
                continue
            try:
                processes = self._nvml.nvmlDeviceGetComputeRunningProcesses(handle)
            except self._error:
                continue
            if any(p.pid == self._pid for p in processes):
                self._in_use.append(index)  # stays sampled for the rest of the run
        self._in_use.sort()

    def _utilization(self, handle: Any) -> dict[str, float]:
        return {"utilization_percent": float(self._nvml.nvmlDeviceGetUtilizationRates(handle).gpu)}

    def _memory(self, handle: Any) -> dict[str, float]:
        info = self._nvml.nvmlDeviceGetMemoryInfo(handle)
        used = {"memory_used_mb": info.used / MB}
        return {**used, "memory_percent": 100.0 * info.used / info.total} if info.total else used

    def _temperature(self, handle: Any) -> dict[str, float]:
        return {"temperature_c": float(self._nvml.nvmlDeviceGetTemperature(handle, self._nvml.NVML_TEMPERATURE_GPU))}

    def _power(self, handle: Any) -> dict[str, float]:
        return {"power_w": self._nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0}  # NVML gives milliwatts

    FIELDS: tuple[tuple[str, Callable[["GpuProbe", Any], dict[str, float]]], ...] = (
        ("utilization", _utilization), ("memory", _memory), ("temperature", _temperature), ("power", _power),
    )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _shutdown(nvml: Any) -> None:
    try:
        nvml.nvmlShutdown()
    except Exception:
        pass  # nothing to release
