"""GPU telemetry through NVML, the same way for every engine: peak memory above the idle
baseline (taken before the engine starts, where the harness starts it), mean utilization,
and energy, sampled in a background thread."""

from __future__ import annotations

import threading
import time


def nvml():
    """The initialised pynvml module, or None where there is no NVIDIA driver."""
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml
    except Exception:  # ImportError, or NVMLError on machines without a driver
        return None


def used_memory() -> list[int] | None:
    pynvml = nvml()
    if pynvml is None:
        return None
    return [
        int(pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(i)).used)
        for i in range(pynvml.nvmlDeviceGetCount())
    ]


class GPUSampler:
    """Use as a context manager around a sweep point; `.result()` gives the numbers."""

    def __init__(self, baseline: list[int] | None, interval_s: float = 0.05):
        self.pynvml = nvml()
        self.baseline = baseline
        self.interval = interval_s
        self._stop = threading.Event()
        self._peak: list[int] = []
        self._util: list[list[int]] = []
        self._energy0: list[int | None] = []
        self._energy1: list[int | None] = []
        self._t0 = self._t1 = 0.0

    def _handles(self):
        p = self.pynvml
        return [p.nvmlDeviceGetHandleByIndex(i) for i in range(p.nvmlDeviceGetCount())]

    def _energy(self) -> list[int | None]:
        out = []
        for h in self._handles():
            try:
                out.append(int(self.pynvml.nvmlDeviceGetTotalEnergyConsumption(h)))  # mJ
            except Exception:
                out.append(None)
        return out

    def _name(self, i: int) -> str | None:
        try:
            name = self.pynvml.nvmlDeviceGetName(self.pynvml.nvmlDeviceGetHandleByIndex(i))
            return name.decode() if isinstance(name, bytes) else str(name)
        except Exception:
            return None

    def _run(self):
        while not self._stop.is_set():
            for i, h in enumerate(self._handles()):
                self._peak[i] = max(self._peak[i], int(self.pynvml.nvmlDeviceGetMemoryInfo(h).used))
                self._util[i].append(int(self.pynvml.nvmlDeviceGetUtilizationRates(h).gpu))
            self._stop.wait(self.interval)

    def __enter__(self):
        if self.pynvml is None:
            return self
        n = len(self._handles())
        self._peak = [0] * n
        self._util = [[] for _ in range(n)]
        self._energy0 = self._energy()
        self._t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.pynvml is None:
            return
        self._stop.set()
        self._thread.join()
        self._t1 = time.perf_counter()
        self._energy1 = self._energy()

    def result(self) -> dict | None:
        if self.pynvml is None:
            return None
        gpus = []
        for i, peak in enumerate(self._peak):
            base = self.baseline[i] if self.baseline and i < len(self.baseline) else None
            e0, e1 = self._energy0[i], self._energy1[i]
            util = self._util[i]
            gpus.append({
                "index": i,
                "name": self._name(i),
                "peak_used_bytes": peak,
                "idle_baseline_bytes": base,
                "peak_above_baseline_bytes": None if base is None else peak - base,
                "mean_utilization_pct": sum(util) / len(util) if util else None,
                "energy_j": None if e0 is None or e1 is None else (e1 - e0) / 1000.0,
            })  # fmt: skip
        return {"duration_s": self._t1 - self._t0, "gpus": gpus}
