"""The step-time model: FLOP counts against their formulas, monotonicity, overrides, records."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from click.testing import CliRunner

from accumbench.cli import main
from accumbench.estimate_assumptions import assumptions_for, kind_for_device_name
from accumbench.records import read_records
from accumbench.steptime import (DTYPES, KERNEL, OUTSIDE, VIEW, OpTable, OpTally, grouped_mm_flops,
                                 is_training_batch_norm, kernel_seconds, op_flops, optimizer_step_start,
                                 predict_step_time)

TINY_MLP = ["--workload", "mlp", "--workload-opt", "size=tiny", "--micro-batch", "2,4", "--accum-steps", "1,4"]
SPEED = assumptions_for("h100").speed()


def test_matmul_flops_are_two_m_n_k():
    m, k, n = 3, 5, 7
    a, b = torch.randn(m, k), torch.randn(k, n)
    out = torch.mm(a, b)
    assert op_flops(torch.ops.aten.mm.default, (a, b), {}, out, cuda=True) == 2 * m * n * k



def _mm_flops(pairs) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        for a, b in pairs:
            torch.mm(a, b)
    return counter.get_total_flops()


def test_grouped_mm_flops_are_the_sum_of_the_groups_gemm_flops_and_the_tally_counts_them():
    # flop_counter has no formula for grouped GEMMs (MoE experts); the time model must count them.
    offs = torch.tensor([8, 24, 24, 40], dtype=torch.int32)  # group sizes 8, 16, 0, 16
    bounds = [(0, 8), (8, 24), (24, 24), (24, 40)]
    rows, weights = torch.randn(40, 16), torch.randn(4, 16, 24)
    batched = torch.randn(4, 8, 16)
    wide, tall = torch.randn(8, 40), torch.randn(40, 24)
    layouts = [  # (a, b, offs, the same GEMMs one group at a time)
        (rows, weights, offs, [(rows[s:e], weights[g]) for g, (s, e) in enumerate(bounds)]),
        (batched, weights, None, [(batched[g], weights[g]) for g in range(4)]),
        (wide, tall, offs, [(wide[:, s:e], tall[s:e]) for s, e in bounds]),  # groups split k
    ]
    for a, b, group_offs, per_group in layouts:
        a, b = a.bfloat16(), b.bfloat16()
        out = torch._grouped_mm(a, b, offs=group_offs)
        assert grouped_mm_flops(a, b, out) == _mm_flops(per_group)
        tally = OpTally(cuda=True)
        tally.record(torch.ops.aten._grouped_mm.default, (a, b), {"offs": group_offs}, out, 0)
        assert tally.table().flops[0] == _mm_flops(per_group) > 0
        assert DTYPES[tally.table().dtype[0]] == "bf16"

def test_bytes_moved_count_what_an_op_writes_in_place_once():
    # An in-place foreach op returns nothing: the lists it writes must still count as written
    # (AdamW's step is a dozen of them over every parameter); an in-place op returning its
    # `self` counts it once as its output; an out-of-place op its inputs and its output.
    aten = torch.ops.aten
    xs, ys = [torch.randn(10) for _ in range(3)], [torch.randn(10) for _ in range(3)]
    x = torch.randn(10)
    tally = OpTally(cuda=True)
    tally.record(aten._foreach_mul_.List, (xs, ys), {}, None, 0)  # reads xs, ys; writes xs
    tally.record(aten.add_.Tensor, (x, x), {}, x, 0)  # reads x twice, writes x
    tally.record(aten.mul.Tensor, (x, x), {}, torch.empty(10), 0)
    assert tally.table().nbytes.tolist() == [3 * 3 * 40, 3 * 40, 3 * 40]


def test_attention_flops_match_the_formula_forward_and_backward():
    batch, heads, seq, dim = 2, 3, 16, 8
    q, k, v = (torch.randn(batch, heads, seq, dim) for _ in range(3))
    forward = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default
    out, lse = forward(q, k, v)
    # The CPU kernel the fake step runs stands for CUDA's flash attention: 4*b*h*s^2*d forward.
    assert op_flops(forward, (q, k, v), {}, (out, lse), cuda=True) == 4 * batch * heads * seq**2 * dim
    # FlopCounterMode on the CPU counts none for it: so neither does the cpu kind.
    assert op_flops(forward, (q, k, v), {}, (out, lse), cuda=False) == 0
    backward = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward.default
    grads = backward(out, q, k, v, out, lse, 0.0, False)
    # Backward: 2.5x the forward (dV, dP, dS->dQ, dK: five matmuls against the forward's two).
    assert op_flops(backward, (out, q, k, v, out, lse, 0.0, False), {}, grads, cuda=True) \
        == 10 * batch * heads * seq**2 * dim


def _table(flops: list[float], nbytes: list[float] | None = None, kinds: list[int] | None = None) -> OpTable:
    n = len(flops)
    return OpTable(np.array(kinds or [KERNEL] * n, dtype=np.int8), np.array(flops, dtype=float),
                   np.array(nbytes or [0.0] * n, dtype=float), np.full(n, DTYPES.index("bf16"), dtype=np.int8),
                   np.zeros(n, dtype=np.int16), np.zeros(n, dtype=bool), np.zeros(n, dtype=np.int32),
                   np.zeros(n, dtype=bool))


def test_predicted_time_grows_with_flops_and_with_op_count():
    small = predict_step_time(_table([1e12] * 10), SPEED).seconds
    large = predict_step_time(_table([4e12] * 10), SPEED).seconds
    assert large > small * 3  # device-bound: time follows the FLOPs
    few = predict_step_time(_table([1e3] * 10), SPEED).seconds
    many = predict_step_time(_table([1e3] * 1000), SPEED).seconds
    # Host-bound: each op more costs its host time.
    assert many - few == pytest.approx(990 * (SPEED.host_op_seconds + SPEED.launch_seconds), rel=1e-9)
    with_views = predict_step_time(_table([1e3] * 10 + [0.0] * 10, kinds=[KERNEL] * 10 + [VIEW] * 10), SPEED)
    # Views launch nothing: they cost only the host's per-op time.
    few_host = predict_step_time(_table([1e3] * 10), SPEED).host_seconds
    assert with_views.host_seconds == pytest.approx(few_host + 10 * SPEED.host_op_seconds)
    assert with_views.seconds > few
    assert with_views.kernels == 10 and with_views.bound == "host"
    # One memory-bound kernel: launched after its host time, then bytes over the achieved bandwidth.
    assert predict_step_time(_table([0.0], nbytes=[3.35e12]), SPEED).seconds == pytest.approx(
        SPEED.host_op_seconds + SPEED.launch_seconds + 1.0 / SPEED.bandwidth_efficiency, rel=1e-9)


def test_accumulation_repeats_the_last_micro_step_before_the_optimizer_step():
    table = OpTable(np.full(5, KERNEL, dtype=np.int8), np.array([1e12, 2e12, 2e12, 0.0, 0.0]), np.zeros(5),
                    np.full(5, DTYPES.index("bf16"), dtype=np.int8),
                    np.array([0, 1, 1, OUTSIDE, OUTSIDE], dtype=np.int16),
                    np.zeros(5, dtype=bool), np.zeros(5, dtype=np.int32), np.zeros(5, dtype=bool))
    four = table.repeated(4)
    assert four.flops.tolist() == [1e12, 2e12, 2e12, 2e12, 2e12, 2e12, 2e12, 0.0, 0.0]
    assert four.micro_step.tolist()[-2:] == [OUTSIDE, OUTSIDE] and table.repeated(2) is table
    assert predict_step_time(table, SPEED, 4).seconds > predict_step_time(table, SPEED, 2).seconds
    optimizer = table.take(table.micro_step == OUTSIDE)  # the optimizer step's ops alone
    assert len(optimizer) == 2 and set(optimizer.micro_step.tolist()) == {OUTSIDE}
    assert 0 < predict_step_time(optimizer, SPEED).seconds < predict_step_time(table, SPEED).seconds


def test_the_step_host_time_comes_once_per_step_before_the_optimizer_step():
    # zero_grad's op, two micro-steps of small ops, the optimizer step's two ops.
    steps = np.array([OUTSIDE, 0, 0, 1, 1, OUTSIDE, OUTSIDE], dtype=np.int16)
    n = len(steps)
    table = OpTable(np.full(n, KERNEL, dtype=np.int8), np.full(n, 1e3), np.zeros(n),
                    np.full(n, DTYPES.index("bf16"), dtype=np.int8), steps, np.zeros(n, dtype=bool),
                    np.zeros(n, dtype=np.int32), np.zeros(n, dtype=bool))
    assert optimizer_step_start(table) == 5 and optimizer_step_start(table.take(steps != OUTSIDE)) == 4
    none = dataclasses.replace(SPEED, step_host_seconds=0.0)
    some = dataclasses.replace(SPEED, step_host_seconds=1e-3)
    for accum in (2, 8):  # once per optimizer step, however many micro-steps
        assert predict_step_time(table, some, accum).seconds - predict_step_time(table, none, accum).seconds \
            == pytest.approx(1e-3, rel=1e-9)
    # Device-bound: the queue of large GEMMs hides the host's work before the optimizer step.
    heavy = dataclasses.replace(table, flops=np.where(steps == OUTSIDE, 1e3, 1e13))
    assert predict_step_time(heavy, some, 8).seconds == pytest.approx(predict_step_time(heavy, none, 8).seconds,
                                                                        rel=1e-12)
    assert predict_step_time(heavy, some, 8).bound == "device"
    assert predict_step_time(table, some, 8).bound == "host"


def test_training_batch_norm_runs_at_its_own_rate_and_eval_mode_does_not():
    aten = torch.ops.aten
    x = torch.randn(2, 3, 4, 4)
    assert is_training_batch_norm(aten.native_batch_norm.default, (x, None, None, None, None, True, 0.1, 1e-5), {})
    assert not is_training_batch_norm(aten.native_batch_norm.default, (x, None, None, None, None, False, 0.1, 1e-5), {})
    assert is_training_batch_norm(aten._native_batch_norm_legit.no_stats, (x, None, None, True, 0.1, 1e-5), {})
    assert is_training_batch_norm(aten.cudnn_batch_norm_backward.default, (x,), {})  # training only
    assert not is_training_batch_norm(aten._native_batch_norm_legit_no_training.default, (x,), {})
    assert not is_training_batch_norm(aten.add.Tensor, (x, x), {})
    # A memory-bound op of 1 GB: at the batch-norm rate when flagged, else at the bandwidth.
    table = _table([0.0, 0.0], nbytes=[1e9, 1e9])
    flagged = dataclasses.replace(table, batch_norm=np.array([True, False]))
    speed = assumptions_for("h100", {"batch_norm_bandwidth": "1e11"}).speed()
    assert speed.batch_norm_bandwidth == 1e11
    seconds = kernel_seconds(flagged, speed)
    assert seconds[0] == pytest.approx(1e9 / 1e11, rel=1e-12)
    assert seconds[1] == pytest.approx(1e9 / (speed.bandwidth_efficiency * speed.memory_bandwidth), rel=1e-12)
    # The estimate meter flags the BatchNorm ConvNet's norm layers, forward and backward, in each
    # micro-step (tiny: two stages of two conv-norm-ReLU layers), and nothing of the GroupNorm one.
    from accumbench.cases import Case
    from accumbench.estimate import estimate_cases

    tables = {}
    cases = [Case(workload=w, scenario="accumulated", micro_batch=2, accum_steps=2, options=(("size", "tiny"),))
             for w in ("convnet-bn", "convnet-gn")]
    estimate_cases(cases, assumptions_for("h100"), on_profile=lambda c, p: tables.__setitem__(c.workload, p.ops))
    bn = tables["convnet-bn"]
    for step in (0, 1):
        assert int(bn.batch_norm[bn.micro_step == step].sum()) == 8
    assert not tables["convnet-gn"].batch_norm.any()


def test_estimate_records_carry_a_predicted_speed_and_overrides_apply(tmp_path):
    runner = CliRunner()
    out = tmp_path / "h100.jsonl"
    shown = runner.invoke(main, ["estimate", *TINY_MLP, "--out", str(out)])
    assert shown.exit_code == 0
    # The summary shows the predicted speeds beside the peaks, and says they are a model's.
    assert "predicted samples/s" in shown.stdout and "not measured" in shown.stdout
    records = {r.case_id: r for r in read_records(out)}
    assert all(f"~{r.samples_per_s:,.1f}" in shown.stdout for r in records.values())
    shipped_error = assumptions_for("h100").speed_ratio_error
    assert all(r.assumptions["speed_ratio_error"] == shipped_error for r in records.values())
    for r in records.values():
        assert r.step_times_s == () and r.predicted_step_time_s > 0  # predicted, never measured
        assert r.samples_per_s == pytest.approx(r.effective_batch / r.predicted_step_time_s)
        assert any(a.startswith("step-time-model") for a in r.assumptions["applied"])
    one = next(r for r in records.values() if r.micro_batch == 2 and r.accum_steps == 1)
    four = next(r for r in records.values() if r.micro_batch == 2 and r.accum_steps == 4)
    assert four.predicted_step_time_s > 2 * one.predicted_step_time_s  # 4 micro-steps (2 profiled, 2 repeated)
    slow = tmp_path / "slow.jsonl"
    result = runner.invoke(main, ["estimate", *TINY_MLP, "--assume", "host_op_seconds=1e-3", "--out", str(slow)])
    assert result.exit_code == 0, result.output
    for r in read_records(slow):
        assert r.assumptions["host_op_seconds"] == 1e-3
        assert r.predicted_step_time_s > 10 * records[r.case_id].predicted_step_time_s
    bad = runner.invoke(main, ["estimate", *TINY_MLP, "--assume", "flop_efficiency=fast", "--out", str(slow)])
    assert bad.exit_code == 2 and "flop_efficiency takes a number" in bad.output


def test_mfu_is_against_the_peak_the_estimate_assumes(tmp_path):
    # An assumed peak changed the step time but MFU kept dividing by the data sheet's 989 TFLOP/s.
    runner = CliRunner()
    for peak in ("989.4e12", "300e12"):
        out = tmp_path / f"{peak}.jsonl"
        result = runner.invoke(main, ["estimate", "--workload", "gpt", "--workload-opt", "size=tiny", "--amp", "bf16",
                                      "--micro-batch", "4", "--accum-steps", "1", "--scenario", "large-batch",
                                      "--assume", f"peak_flops_bf16={peak}", "--out", str(out)])
        assert result.exit_code == 0, result.output
        (record,) = read_records(out)
        assert record.mfu == pytest.approx(record.flops_per_step / record.predicted_step_time_s / float(peak))
    # Constants that overflow the step time: no speed at all, said, not 0 samples/s beside no step time.
    out = tmp_path / "overflow.jsonl"
    assert runner.invoke(main, ["estimate", *TINY_MLP, "--assume", "host_op_seconds=1e308",
                                "--out", str(out)]).exit_code == 0
    for record in read_records(out):
        assert (record.samples_per_s, record.predicted_step_time_s, record.mfu) == (None, None, None)
        assert "step-time-model: no finite step time from these constants" in record.assumptions["applied"]


def test_the_h100_constants_are_named_and_h200_differs_by_its_data_sheet():
    h100, h200 = assumptions_for("h100"), assumptions_for("h200")
    assert h100.speed() is not None and assumptions_for("cpu").speed() is None
    assert h200.memory_bandwidth > h100.memory_bandwidth and h200.peak_flops_bf16 == h100.peak_flops_bf16
    with pytest.raises(ValueError):
        dataclasses.replace(h100, flop_efficiency=0.0)



def test_a_cuda_device_name_names_its_kind():
    assert kind_for_device_name("NVIDIA H200") == "h200"
    assert kind_for_device_name("NVIDIA H100 80GB HBM3") == "h100"
    assert kind_for_device_name("NVIDIA A100-SXM4-80GB") == "a100"
    assert kind_for_device_name("NVIDIA GeForce RTX 4090") is None

def test_foreach_ops_cost_host_time_per_tensor_in_their_lists():
    table = _table([1e3] * 3)
    listed = dataclasses.replace(table, list_tensors=np.array([0, 100, 0], dtype=np.int32))
    speed = dataclasses.replace(SPEED, host_tensor_seconds=1e-6)
    assert predict_step_time(listed, speed).host_seconds == pytest.approx(
        predict_step_time(table, speed).host_seconds + 100e-6)


def test_compare_never_gates_on_or_shows_predicted_throughput():
    from accumbench.gate.checks import NOT_AVAILABLE
    from accumbench.gate.compare import compare_results

    def estimate(rate: float) -> dict:
        return {"case_id": "c", "status": "ok", "meter": "estimate", "device_name": "estimate: H100",
                "torch_version": "2", "peak_allocated": 100, "step_times_s": [], "samples_per_s": rate,
                "predicted_step_time_s": 1.0 / rate, "world_size": 1}

    result = compare_results([estimate(100.0)], [estimate(50.0)])  # predicted to halve: not a regression
    (case,) = result.cases
    assert case.throughput.verdict == NOT_AVAILABLE and not case.throughput.fails
    assert case.baseline_samples_per_s is None and case.current_samples_per_s is None


def test_pair_order_counts_only_the_pairs_the_measurements_resolve():
    from accumbench.stats import StepTimes
    from accumbench.steptime import PairOrder, pair_order

    # Three cases of one sample per step: 10 ms, 20 ms (clearly slower) and 10.005 ms (inside
    # the first one's noise: the measurements cannot order that pair).
    jitter = [0.0, 0.002, -0.002, 0.001, -0.001, 0.0015, -0.0015, 0.0005]
    fast, slow, tie = ([t * (1 + j) for j in jitter] for t in (0.010, 0.020, 0.010005))
    measured = [StepTimes(fast), StepTimes(slow), StepTimes(tie)]
    right = pair_order(measured, [1, 1, 1], predicted=[100.0, 50.0, 99.0])
    assert (right.pairs, right.resolved, right.agree) == (3, 2, 2)
    assert right.share == 1.0
    # Swapping the order of the tied pair changes nothing; ranking the slow case first costs both pairs.
    assert pair_order(measured, [1, 1, 1], predicted=[99.0, 50.0, 100.0]).agree == 2
    assert pair_order(measured, [1, 1, 1], predicted=[100.0, 150.0, 99.0]).agree == 0
    # Samples per step enter the throughput: 2 samples in 20 ms is as fast as 1 in 10 ms.
    assert pair_order(measured[:2], [1, 2], predicted=[1.0, 2.0]).resolved == 0
    # A drift allowance wider than the gap leaves nothing to order.
    assert pair_order(measured, [1, 1, 1], predicted=[100.0, 50.0, 99.0], drift=1.5).resolved == 0
    # Medians known only to +-10% (too noisy to claim a speed-up) still order a 4x gap.
    wide = [0.0, 0.2, -0.2, 0.1, -0.1, 0.15, -0.15, 0.05]
    noisy = [StepTimes([t * (1 + j) for j in wide]) for t in (0.010, 0.040)]
    assert pair_order(noisy, [1, 1], predicted=[2.0, 1.0]) == PairOrder(pairs=1, resolved=1, agree=1)
    with pytest.raises(ValueError):
        pair_order(measured, [1, 1], predicted=[1.0, 2.0, 3.0])


@pytest.fixture
def validation(monkeypatch):
    """benchmarks/steptime_validation.py as a module."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "steptime_validation.py"
    spec = importlib.util.spec_from_file_location("steptime_validation", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # its dataclasses look themselves up there
    spec.loader.exec_module(module)
    return module


def test_the_validation_fit_recovers_known_constants_and_keeps_measured_ones_fixed(validation):
    """benchmarks/steptime_validation.py's fit, on cases made with known constants: free constants
    are found again (the predictions match), constants given as measured are not touched."""
    from accumbench.stats import StepTimes

    truth = dataclasses.replace(SPEED, host_op_seconds=8e-6, launch_seconds=20e-6, step_host_seconds=5e-4,
                                bandwidth_efficiency=0.6)
    # Host-bound tables (many small ops) and device-bound ones (large GEMMs, large copies) so
    # that host costs, GEMM efficiency and bandwidth each decide some cases.
    tables = [_table([1e3] * n) for n in (50, 200, 800)] + [_table([f] * 4) for f in (5e12, 2e13)] \
        + [_table([0.0] * 4, nbytes=[b] * 4) for b in (1e10, 4e10)] + [_table([1e3] * 300 + [1e13] * 2)]

    def point(i: int, table: OpTable):
        seconds = predict_step_time(table, truth).seconds
        return validation.Point(f"case{i}", "synthetic", "large-batch", 8, 1, 8 / seconds, table, StepTimes(()))

    points = [point(i, t) for i, t in enumerate(tables)]
    fitted = validation.fit(points, SPEED)
    for p in points:
        assert validation.predict(p, fitted) == pytest.approx(p.measured, rel=0.02)
    # The FLOP efficiencies are measured, never fitted.
    assert (fitted.flop_efficiency, fitted.conv_flop_efficiency) == (SPEED.flop_efficiency, SPEED.conv_flop_efficiency)
    # Measured device constants stay as given, however the host costs move.
    given = dataclasses.replace(SPEED, flop_efficiency=0.3, bandwidth_efficiency=0.5)
    kept = validation.fit(points, given, validation.HOST_SIDE)
    assert (kept.flop_efficiency, kept.bandwidth_efficiency) == (0.3, 0.5)
    assert kept.kernel_floor_seconds == given.kernel_floor_seconds
    assert kept.host_op_seconds != given.host_op_seconds


def test_ratio_error_is_one_for_right_ratios_and_the_factor_of_a_wrong_one():
    from accumbench.steptime import ratio_error

    measured = [100.0, 200.0, 400.0, 10.0, 30.0]
    groups = ["a", "a", "a", "b", "b"]
    # Every ratio right, even with every prediction 3x off: the plan compares within a workload.
    assert ratio_error(measured, [3 * m for m in measured], groups) == pytest.approx(1.0)
    # One case of group b off by 1.5x: b's only pair is 1.5x off, and b weighs as much as a's three.
    predicted = [100.0, 200.0, 400.0, 10.0, 45.0]
    assert ratio_error(measured, predicted, groups) == pytest.approx(1.5)
    assert ratio_error(measured, predicted, groups, quantile=0.4) == pytest.approx(1.0)
    assert math.isnan(ratio_error([1.0], [1.0], ["a"]))


def test_the_validation_pools_only_runs_of_the_reference_device(validation, tmp_path):
    """--repeats measured on another GPU are not the H100's reference: left out and counted;
    a case measured in three processes of the same device gets the median of its runs."""
    from accumbench.records import write_records
    from accumbench.stats import StepTimes
    from gate_helpers import record

    def run(device: str, seconds: float, case: str = "a"):
        return record(case, times=(seconds,) * 4, device_name=device, micro_batch=32, accum_steps=1)

    write_records(tmp_path / "ref.jsonl", [run("H100", 0.010), run("H100", 0.020, "b")])
    write_records(tmp_path / "r1.jsonl", [run("H100", 0.012), run("H200", 0.005)])
    write_records(tmp_path / "r2.jsonl", [run("H100", 0.016), run("H200", 0.005, "b")])
    runs, other_device = validation.runs_by_case(tmp_path / "ref.jsonl", [tmp_path / "r1.jsonl", tmp_path / "r2.jsonl"])
    assert other_device == 2
    assert [run.samples_per_s for run in runs["a"]] == pytest.approx([3200.0, 32 / 0.012, 2000.0])
    assert len(runs["b"]) == 1
    assert [case for case, _ in validation.repeated_cases(runs)] == ["a"]
    points = [validation.Point(case, "w", "large-batch", 8, 1, 1.0, None, StepTimes(())) for case in ("a", "b")]
    (steady,) = validation.median_of_runs(points, runs)
    assert steady.case_id == "a" and steady.measured == pytest.approx(32 / 0.012)
    assert len(steady.times) == 12
