"""A pytest plugin for `bench_memory.py --per-test`: each test's anonymous memory at its
start, its peak and at its end (psutil, sampled every 0.05 s in a thread of the pytest
process), written as JSON to the file named by QUANTFAIR_MEMORY_PROBE at session end.

    QUANTFAIR_MEMORY_PROBE=peaks.json PYTHONPATH=benchmarks pytest -p memory_probe ...
"""

from __future__ import annotations

import json
import os
import threading

import psutil
import pytest
from bench_memory import anonymous_bytes

INTERVAL_S = 0.05


class Probe:
    def __init__(self, path: str) -> None:
        self.path = path
        self.process = psutil.Process()
        self.peak = 0
        self.lock = threading.Lock()  # a sample read during one test may not outlive its reset
        self.tests: list[dict] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        while not self.done.wait(INTERVAL_S):
            sample = anonymous_bytes(self.process)  # reading smaps takes a while
            with self.lock:
                self.peak = max(self.peak, sample)

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(self, item):
        start = anonymous_bytes(self.process)
        with self.lock:
            self.peak = start
        yield
        end = anonymous_bytes(self.process)
        self.tests.append({"test": item.nodeid, "start": start,
                           "peak": max(self.peak, end), "end": end})

    def pytest_sessionfinish(self) -> None:
        self.done.set()
        with open(self.path, "w") as handle:
            json.dump(self.tests, handle, indent=1)


def pytest_configure(config) -> None:
    path = os.environ.get("QUANTFAIR_MEMORY_PROBE")
    if path:
        config.pluginmanager.register(Probe(path), "quantfair-memory-probe")
