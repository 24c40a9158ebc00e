"""pytest plug-in: make pytest-benchmark comparisons fail on peak-memory growth too.

pytest-benchmark gates time (`--benchmark-compare-fail=median:10%`) but knows nothing of memory.
accumbench's benchmarks (`benchmarks/test_scenarios.py`) store each case's peak in
`benchmark.extra_info["peak_allocated"]`; this plug-in compares that number with the one saved
in the run named by `--benchmark-compare` and fails the session (exit 1) when it grew by more
than `--accumbench-memory-tolerance`:

    pytest benchmarks --benchmark-autosave                                  # the baseline
    pytest benchmarks --benchmark-compare --benchmark-compare-fail=median:10%   # time and memory

It is active when `--accumbench-memory-tolerance` is given, or when `--benchmark-compare-fail`
is (then with the default tolerance, 0.5%); `--accumbench-memory-tolerance=off` turns it off.
Registered through the `pytest11` entry point, so it loads in every pytest run of an environment
with accumbench installed: it imports nothing heavy and does nothing unless asked (disable it
entirely with `-p no:accumbench`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

DEFAULT_TOLERANCE = "0.5%"
MEMORY_KEY = "peak_allocated"
# What a peak was measured with (benchmarks/test_scenarios.py stores them): peaks of two setups
# are not compared, as `accumbench compare` refuses them.
SETUP_KEYS = ("meter", "device_name", "torch_version")
_RESULT_KEY = pytest.StashKey["list[MemoryFinding]"]()


@dataclass(frozen=True)
class MemoryFinding:
    """One benchmark's peak compared with the saved run's: `verdict` as the gate's checks say."""

    fullname: str
    source: str
    verdict: str
    reason: str


def pytest_addoption(parser: pytest.Parser) -> None:
    """Add `--accumbench-memory-tolerance`."""
    group = parser.getgroup("accumbench", "accumbench memory gate (with pytest-benchmark)")
    group.addoption(
        "--accumbench-memory-tolerance",
        dest="accumbench_memory_tolerance",
        default=None,
        metavar="TOL",
        help=(
            "Fail when a benchmark's extra_info['peak_allocated'] grew by more than TOL ('0.5%%', "
            "'0', '64KiB') against --benchmark-compare. Default: 0.5%% when --benchmark-compare-fail "
            "is given, else off; 'off' disables."
        ),
    )


def memory_findings(benchmarks: Any, compared_mapping: Any, tolerance: str) -> list[MemoryFinding]:
    """Compare each benchmark's peak with the saved runs' (`{path: {fullname: bench dict}}`).

    Benchmarks without `peak_allocated` on both sides are not compared (they are not
    accumbench benchmarks, or the saved run predates the field). Peaks measured with another
    meter, device or torch (`SETUP_KEYS`, where both sides name them) are a "mismatch", which
    fails the session as a regression does: a gate comparing them would pass or fail anything.
    """
    from accumbench.gate.checks import MemoryCheck

    check = MemoryCheck.parse(tolerance)
    findings = []
    for bench in benchmarks:
        current = (getattr(bench, "extra_info", None) or {}).get(MEMORY_KEY)
        if current is None:
            continue
        for path, saved in (compared_mapping or {}).items():
            before = saved.get(bench.fullname)
            if before is None:
                continue
            base_info = before.get("extra_info") or {}
            baseline = base_info.get(MEMORY_KEY)
            if baseline is None:
                continue
            info = getattr(bench, "extra_info", None) or {}
            differing = [key for key in SETUP_KEYS if key in info and key in base_info and info[key] != base_info[key]]
            if differing:
                reason = "; ".join(f"{key} {base_info[key]!r} saved, {info[key]!r} now" for key in differing)
                findings.append(MemoryFinding(bench.fullname, str(path), "mismatch", f"not compared: {reason}"))
                continue
            outcome = check.evaluate(baseline, current)
            findings.append(MemoryFinding(bench.fullname, str(path), outcome.verdict, outcome.reason))
    return findings


def _tolerance(config: pytest.Config) -> str | None:
    value = config.getoption("accumbench_memory_tolerance", None)
    if value is not None:
        return None if str(value).strip().lower() == "off" else str(value)
    session = getattr(config, "_benchmarksession", None)
    return DEFAULT_TOLERANCE if getattr(session, "compare_fail", None) else None


def pytest_configure(config: pytest.Config) -> None:
    """Reject a malformed tolerance at start-up rather than after the benchmarks ran."""
    value = config.getoption("accumbench_memory_tolerance", None)
    if value is not None and str(value).strip().lower() != "off":
        from accumbench.gate.checks import Tolerance

        try:
            Tolerance.parse(value)
        except ValueError as exc:
            raise pytest.UsageError(f"--accumbench-memory-tolerance: {exc}") from None


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Compare peaks once the benchmarks ran; a growth past tolerance makes the exit status 1."""
    config = session.config
    tolerance = _tolerance(config)
    benchmark_session = getattr(config, "_benchmarksession", None)
    if tolerance is None or benchmark_session is None:
        return
    findings = memory_findings(
        getattr(benchmark_session, "benchmarks", ()),
        getattr(benchmark_session, "compared_mapping", None),
        tolerance,
    )
    config.stash[_RESULT_KEY] = findings
    if any(f.verdict in ("regression", "mismatch") for f in findings) and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.hookimpl(trylast=True)  # after pytest-benchmark's table
def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """List the memory regressions (and a one-line count of what was compared)."""
    findings = config.stash.get(_RESULT_KEY, None)
    if findings is None:
        return
    regressions = [f for f in findings if f.verdict == "regression"]
    mismatches = [f for f in findings if f.verdict == "mismatch"]
    bad = bool(regressions or mismatches)
    terminalreporter.section("accumbench memory gate", sep="-", red=bad, green=not bad)
    for f in regressions:
        terminalreporter.line(f"MEMORY REGRESSION {f.fullname}: {f.reason} (vs {f.source})", red=True)
    for f in mismatches:
        terminalreporter.line(f"MEMORY NOT COMPARED {f.fullname}: {f.reason} (vs {f.source}); compare runs of "
                              "one setup", red=True)
    terminalreporter.line(
        f"{len(regressions)} memory regression(s) in {len(findings)} compared benchmark(s), "
        f"tolerance {_tolerance(config)}"
    )
