"""One pytest-benchmark benchmark per case: the time of an optimizer step, and its peak memory.

pytest-benchmark times the step (one call = one optimizer step over all micro-batches).
accumbench's meter measures the steady-state peak the same way `accumbench run` does, and the
test stores it in `benchmark.extra_info`, where it is saved with every `--benchmark-autosave`
and compared by accumbench's pytest plug-in (`--benchmark-compare-fail` or
`--accumbench-memory-tolerance`).
"""

from __future__ import annotations

import pytest
import torch

from accumbench.runner import prepare_case


def test_scenario_step(benchmark, case, runner):
    record = runner.measure(case)
    if record.status != "ok":
        # An out-of-memory or failing step is a result for `accumbench run`, but in a benchmark
        # suite that is expected to pass it is a failure worth seeing.
        pytest.fail(f"{record.case_id}: {record.status}: {record.error}")
    benchmark.extra_info.update(
        case_id=record.case_id,
        peak_allocated=record.peak_allocated,
        first_step_peak_allocated=record.first_step_peak_allocated,
        baseline_allocated=record.baseline_allocated,
        effective_batch=record.effective_batch,
        meter=record.meter,
        device_name=record.device_name,
        torch_version=record.torch_version,
    )

    prepared = prepare_case(case, runner.workload(case), runner.device, runner.seed)
    for _ in range(case.warmup):  # optimizer state and workspaces exist before timing starts
        prepared.step()
    if runner.device.type == "cuda":
        def step():
            prepared.step()
            torch.cuda.synchronize()  # time the kernels, not their launch
    else:
        step = prepared.step
    benchmark(step)
    benchmark.extra_info["samples_per_s"] = record.effective_batch / benchmark.stats.stats.median
