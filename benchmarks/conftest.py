"""pytest-benchmark suite over accumbench's scenarios: which cases, on which device.

    pytest benchmarks --benchmark-autosave                        # save a run (.benchmarks/)
    pytest benchmarks --benchmark-compare --benchmark-compare-fail=median:10%
                                                                  # time and, via accumbench's
                                                                  # plug-in, peak memory gated

CPU-sized by default (the `smoke` suite's cases); with CUDA present, the GPU cases of
`benchmarks/pytest_gpu_suite.toml`. `--accumbench-device cpu|cuda` picks explicitly, `--accumbench-suite`
takes any suite name or TOML file instead.
"""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
GPU_SUITE = HERE / "pytest_gpu_suite.toml"


def pytest_addoption(parser: pytest.Parser) -> None:
    """Add --accumbench-device and --accumbench-suite."""
    group = parser.getgroup("accumbench benchmarks")
    group.addoption("--accumbench-device", default="auto", choices=("auto", "cpu", "cuda"),
                    help="Device for the scenario benchmarks (auto: CUDA when present).")
    group.addoption("--accumbench-suite", default=None,
                    help="Suite name or TOML file (default: smoke on CPU, benchmarks/pytest_gpu_suite.toml on CUDA).")


def _device(config: pytest.Config):
    from accumbench.runner import resolve_device

    return resolve_device(config.getoption("accumbench_device"))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize `case` over the suite's cases, with each case's stable id as the test id."""
    if "case" not in metafunc.fixturenames:
        return
    from accumbench.cases import load_suite
    from accumbench.runner import Runner

    device = _device(metafunc.config)
    suite = metafunc.config.getoption("accumbench_suite") or (
        str(GPU_SUITE) if device.type == "cuda" else "smoke"
    )
    cases = load_suite(suite)
    runner = Runner(device)
    metafunc.parametrize("case", cases, ids=[runner.case_id(c) for c in cases])


@pytest.fixture(scope="session")
def runner(request: pytest.FixtureRequest):
    """One accumbench `Runner` (device, meter, seed) for the whole session."""
    from accumbench.runner import Runner

    return Runner(_device(request.config))
