"""The gate on DDP records: gradient all-reduces per optimizer step may not grow."""

from __future__ import annotations

from accumbench.compare import compare_results
from accumbench.gate.checks import IMPROVEMENT, NOT_AVAILABLE, REGRESSION, SAME, CommunicationCheck
from gate_helpers import record

NO_SYNC = {"backend": "gloo", "no_sync": True, "buckets": 2, "allreduces_per_step": 2.0,
           "allreduce_time_s_per_step": 0.004}


def ddp(case_id: str, distributed: dict, **fields):
    return record(f"{case_id}/ws2/ddp-nosync", world_size=2, distributed=distributed, **fields)


def test_communication_check_rules():
    check = CommunicationCheck()
    assert check.evaluate(NO_SYNC, NO_SYNC).verdict == SAME
    lost = check.evaluate(NO_SYNC, {**NO_SYNC, "allreduces_per_step": 8.0})
    assert lost.verdict == REGRESSION and lost.change == 3.0
    assert "2 -> 8" in lost.reason and "no_sync()" in lost.reason
    split = check.evaluate(NO_SYNC, {**NO_SYNC, "buckets": 3, "allreduces_per_step": 3.0})
    assert split.verdict == REGRESSION and "buckets 2 -> 3" in split.reason
    assert check.evaluate({**NO_SYNC, "allreduces_per_step": 8.0}, NO_SYNC).verdict == IMPROVEMENT
    # Time alone never decides: it is as noisy as the step.
    assert check.evaluate(NO_SYNC, {**NO_SYNC, "allreduce_time_s_per_step": 1.0}).verdict == SAME
    assert check.evaluate(NO_SYNC, None).verdict == NOT_AVAILABLE
    assert check.evaluate({"no_sync": True}, NO_SYNC).verdict == NOT_AVAILABLE  # a failed rank's block


def test_losing_no_sync_fails_the_gate_even_when_memory_and_speed_hold():
    base = [ddp("gpt", NO_SYNC)]
    cur = [ddp("gpt", {**NO_SYNC, "allreduces_per_step": 8.0, "allreduce_time_s_per_step": 0.016})]
    result = compare_results(base, cur)
    assert result.failed and result.exit_code == 1
    (case,) = result.regressions
    assert case.memory.verdict == SAME
    assert any(r.startswith("communication: gradient all-reduces per optimizer step 2 -> 8") for r in case.reasons)


def test_single_process_records_are_not_checked_for_communication():
    result = compare_results([record("a")], [record("a")])
    assert not result.failed
    assert not any("communication" in r for c in result.cases for r in c.reasons)
