"""accumbench's pytest plug-in: a pytest-benchmark comparison fails when peak memory grew.

Each test runs an inner pytest in a subprocess, as a user would, on a benchmark whose
`extra_info["peak_allocated"]` comes from an environment variable: the plug-in's arithmetic is
the gate's `MemoryCheck` (tested elsewhere on real measurements); here we test the wiring.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

BENCH = '''
import os

def test_step(benchmark):
    benchmark.extra_info["peak_allocated"] = int(os.environ["PEAK"])
    benchmark(lambda: None)
'''
QUICK = ["--benchmark-min-rounds=1", "--benchmark-max-time=0.001", "--benchmark-warmup=off"]
NO_TIME_GATE = "--benchmark-compare-fail=min:1000000%"  # pytest-benchmark's own check, never firing


def inner_pytest(path, peak: int, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PEAK": str(peak)}
    env.pop("PYTEST_ADDOPTS", None)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "test_bench.py",
         f"--benchmark-storage={path / 'storage'}", *QUICK, *args],
        cwd=path, env=env, capture_output=True, text=True, timeout=120,
    )


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A directory with the benchmark file and one saved run (0001) whose peak is 1000 bytes."""
    path = tmp_path_factory.mktemp("bench")
    (path / "test_bench.py").write_text(BENCH)
    first = inner_pytest(path, 1000, "--benchmark-autosave")
    assert first.returncode == 0, first.stdout + first.stderr
    return path


def test_memory_growth_fails_a_compare_fail_run(saved):
    result = inner_pytest(saved, 1010, "--benchmark-compare=0001", NO_TIME_GATE)
    assert result.returncode == 1, result.stdout + result.stderr
    assert ("MEMORY REGRESSION test_bench.py::test_step: peak +10 B (+1.00%) exceeds tolerance 0.5%"
            in result.stdout)
    assert "1 memory regression(s) in 1 compared benchmark(s), tolerance 0.5%" in result.stdout


def test_same_memory_passes(saved):
    result = inner_pytest(saved, 1000, "--benchmark-compare=0001", NO_TIME_GATE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 memory regression(s) in 1 compared benchmark(s), tolerance 0.5%" in result.stdout


@pytest.mark.slow  # a few seconds on 2 cores: .ci/run's slow step runs it
def test_explicit_tolerance(saved):
    assert inner_pytest(saved, 1010, "--benchmark-compare=0001", "--accumbench-memory-tolerance=2%").returncode == 0
    assert inner_pytest(saved, 1001, "--benchmark-compare=0001", "--accumbench-memory-tolerance=0").returncode == 1
    off = inner_pytest(saved, 2000, "--benchmark-compare=0001", NO_TIME_GATE, "--accumbench-memory-tolerance=off")
    assert off.returncode == 0 and "accumbench memory gate" not in off.stdout


def test_plain_compare_does_not_gate(saved):
    # pytest-benchmark's --benchmark-compare alone only shows numbers; so does the plug-in.
    result = inner_pytest(saved, 5000, "--benchmark-compare=0001")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "accumbench memory gate" not in result.stdout


def test_bad_tolerance_is_a_usage_error(saved):
    result = inner_pytest(saved, 1000, "--accumbench-memory-tolerance=lots")
    assert result.returncode == pytest.ExitCode.USAGE_ERROR
    assert "--accumbench-memory-tolerance: cannot read tolerance 'lots'" in result.stderr
    # '0.5' would be 0 bytes: refused as ambiguous, as compare refuses it (one parser, gate.checks).
    result = inner_pytest(saved, 1000, "--accumbench-memory-tolerance=0.5")
    assert result.returncode == pytest.ExitCode.USAGE_ERROR
    assert "--accumbench-memory-tolerance: '0.5' is ambiguous: give '0.5%'" in result.stderr


def test_harmless_without_pytest_benchmark(tmp_path):
    (tmp_path / "test_plain.py").write_text("def test_ok():\n    assert True\n")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:benchmark", "-q", "test_plain.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout


def test_peaks_of_another_meter_device_or_torch_are_not_compared():
    from types import SimpleNamespace

    from accumbench.pytest_plugin import memory_findings

    now = {"peak_allocated": 1000, "meter": "cpu", "device_name": "cpu", "torch_version": "2.13.0"}
    saved = {**now, "meter": "cuda", "device_name": "NVIDIA H100", "peak_allocated": 500}
    bench = SimpleNamespace(fullname="t", extra_info=now)
    (finding,) = memory_findings([bench], {"0001": {"t": {"extra_info": saved}}}, "0.5%")
    assert finding.verdict == "mismatch"
    assert finding.reason == "not compared: meter 'cuda' saved, 'cpu' now; device_name 'NVIDIA H100' saved, 'cpu' now"
    (same,) = memory_findings([bench], {"0001": {"t": {"extra_info": {**now, "peak_allocated": 1000}}}}, "0.5%")
    assert same.verdict != "mismatch"
