"""The estimate meter: equal to the cpu meter on the cpu fake device, the relations of real runs,
the assumptions it adds for CUDA, and the grouped replay that makes whole suites fast."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from accumbench.cases import Case
from accumbench.estimate import estimate_cases, estimate_runner, predicted_oom, proportional
from accumbench.estimate_assumptions import MIB, assumptions_for, parse_overrides, parse_size
from accumbench.meters.cuda_autocast import CUDA_AUTOCAST_POLICY, cuda_autocast_policy
from accumbench.meters.estimate import (
    FREE,
    MOVE,
    NEW,
    RESIZE,
    StepProfile,
    attention_backward_scratch,
    cuda_attention_kernel,
)
from accumbench.runner import Runner

TINY = (("size", "tiny"),)


def case(workload: str, scenario: str, micro: int, accum: int = 1, options=TINY, **knobs) -> Case:
    return Case(workload, scenario, micro, accum, options, warmup=1, steps=1, **knobs)


@pytest.fixture(scope="module")
def cpu_runner() -> Runner:
    return Runner(torch.device("cpu"))


@pytest.fixture(scope="module")
def cpu_estimator() -> Runner:  # the slow path: every case through Runner.measure
    return estimate_runner(assumptions_for("cpu"))


@pytest.fixture(scope="module")
def h100_estimator() -> Runner:
    return estimate_runner(assumptions_for("h100"))


# --- the estimate equals the cpu meter on the cpu fake device --------------------------------

# The smoke suite's every case is compared too (test_estimate_cli): the slow set holds the
# variants of a workload this list already has in the README's command.
SLOW = pytest.mark.slow


@pytest.mark.parametrize("the_case", [
    pytest.param(case("gpt", "large-batch", 4), marks=SLOW),
    case("gpt", "accumulated", 4, 3),
    case("gpt", "accumulated", 4, 2, (("padded", True), ("size", "tiny")), loss_norm="token"),
    pytest.param(case("gpt", "accumulated", 4, 2, amp="bf16"), marks=SLOW),
    case("gpt", "accumulated", 4, 2, amp="fp16", set_to_none=False),
    pytest.param(case("convnet-bn", "accumulated", 4, 2), marks=SLOW),
    case("convnet-bn", "accumulated", 4, 2, amp="bf16"),
    case("convnet-gn", "large-batch", 4, amp="bf16", set_to_none=False),
    pytest.param(case("two-models", "multitask-sequential", 2, 2), marks=SLOW),
], ids=lambda c: f"{c.workload}-{c.scenario}-{c.micro_batch}x{c.accum_steps}-{c.amp}")
def test_cpu_kind_estimate_equals_the_cpu_meter_peak(cpu_runner, cpu_estimator, the_case):
    measured = cpu_runner.measure(the_case)
    estimated = cpu_estimator.measure(the_case)
    assert measured.status == estimated.status == "ok", (measured.error, estimated.error)
    assert estimated.meter == "estimate" and estimated.step_times_s == () and estimated.samples_per_s is None
    # Same step code, same tracker, fake instead of real tensors: to the byte.
    assert estimated.peak_allocated == measured.peak_allocated
    assert estimated.baseline_allocated == measured.baseline_allocated
    assert estimated.first_step_peak_allocated == measured.first_step_peak_allocated
    assert estimated.flops_per_step == measured.flops_per_step


def test_a_tensor_a_module_keeps_between_steps_is_counted_by_both_meters(cpu_runner, cpu_estimator, plugin_path):
    # The forward replaces `self.cache`, so the previous step's 64 KiB stay alive until then:
    # the estimate's fresh tracker must adopt them as the cpu meter's has counted them.
    the_case = case(f"{plugin_path}:cached", "large-batch", 4, options=())
    measured, estimated = cpu_runner.measure(the_case), cpu_estimator.measure(the_case)
    assert measured.status == estimated.status == "ok", (measured.error, estimated.error)
    assert estimated.peak_allocated == measured.peak_allocated
    assert estimated.baseline_allocated == measured.baseline_allocated >= 1024 * 16 * 4


def test_deep_copied_and_converted_fake_parameters_are_counted_as_real_ones(cpu_runner, cpu_estimator, plugin_path):
    # nn.TransformerEncoder deep-copies its layer, and the model is converted with .to(bf16) in
    # build_model: a copy once belonged to a copy of the fake mode (each later op then gave its
    # views storages of their own), and the conversion failed ("Couldn't swap").
    encoder = f"{plugin_path}:torch_encoder"
    for the_case in (case(encoder, "large-batch", 4, options=(("bf16", False),)),
                     case(encoder, "accumulated", 2, 2, options=())):
        measured, estimated = cpu_runner.measure(the_case), cpu_estimator.measure(the_case)
        assert measured.status == estimated.status == "ok", (measured.error, estimated.error)
        assert estimated.peak_allocated == measured.peak_allocated
        assert estimated.baseline_allocated == measured.baseline_allocated
        assert estimated.parameters == measured.parameters  # the tie survives the conversion


def test_pythons_random_is_seeded_so_a_case_repeats_to_the_byte(cpu_runner, cpu_estimator, plugin_path):
    import random

    the_case = case(f"{plugin_path}:python_random", "large-batch", 4, options=())
    peaks = set()
    for state in (1, 2):
        random.seed(state)  # whatever ran before
        peaks |= {cpu_runner.measure(the_case).peak_allocated, cpu_estimator.measure(the_case).peak_allocated}
    assert len(peaks) == 1


def test_tensors_a_module_keeps_in_a_list_are_counted_and_a_growing_list_is_said(cpu_runner, cpu_estimator,
                                                                                 plugin_path):
    # A bank of the last 3 activations is full after the warm-up: both meters hold all of it.
    full = case(f"{plugin_path}:memory_bank", "accumulated", 2, 4, options=())
    measured, estimated = cpu_runner.measure(full), cpu_estimator.measure(full)
    assert estimated.peak_allocated == measured.peak_allocated
    assert not any("more alive between steps" in note for note in estimated.assumptions["applied"])
    # One of 50 still fills up over the run's steps: the estimate's two steps say so.
    growing = case(f"{plugin_path}:memory_bank", "accumulated", 2, 4, options=(("size", 50),))
    for record in (cpu_estimator.measure(growing), estimate_cases([growing], assumptions_for("cpu"))[0]):
        assert "more alive between steps than it found" in "; ".join(record.assumptions["applied"])


def test_lazy_modules_are_refused_in_one_line_by_both_meters(cpu_runner, cpu_estimator, plugin_path):
    the_case = case(f"{plugin_path}:lazy", "large-batch", 4, options=())
    for record in (cpu_runner.measure(the_case), cpu_estimator.measure(the_case)):
        assert record.status == "error" and record.error.startswith("ValueError: the model has lazy modules")


@pytest.mark.slow  # estimates eight GPT cases twice: ~6 s on 2 cores (.ci/run's slow step runs it)
def test_grouped_replay_equals_estimating_each_case(h100_estimator):
    cases = [case("gpt", scenario, micro, accum, amp="bf16")
             for scenario, accum in (("large-batch", 1), ("accumulated", 3)) for micro in (1, 2, 3, 5)]
    fast = estimate_cases(cases, h100_estimator.meter.assumptions)
    notes = {(r.scenario, r.micro_batch): "; ".join(r.assumptions["applied"]) for r in fast}
    replayed = [r.micro_batch for r in fast if "replayed from" in notes[(r.scenario, r.micro_batch)]]
    assert replayed == [2, 2], "of the sizes in between, one is profiled to check the replay, the other replayed"
    assert all("checks the replay" in notes[(scenario, 3)] for scenario in ("large-batch", "accumulated"))
    for the_case, record in zip(cases, fast):
        slow = h100_estimator.measure(the_case)  # every micro-step of every case, no replay
        assert record.case_id == slow.case_id and record.effective_batch == the_case.effective_batch
        assert (record.peak_allocated, record.baseline_allocated, record.breakdown, record.flops_per_step) == (
            slow.peak_allocated, slow.baseline_allocated, slow.breakdown, slow.flops_per_step), the_case.label()
        # Step time too: interpolated op tables and the repeated third micro-step match running them.
        assert record.predicted_step_time_s == pytest.approx(slow.predicted_step_time_s, rel=1e-9)


# --- the relations of real runs ------------------------------------------------------------------

@pytest.mark.slow  # a few seconds on 2 cores: .ci/run's slow step runs it
def test_estimated_accumulated_peak_is_flat_in_n(h100_estimator):
    # The runner path runs every micro-step (no replay): N = 2, 3 and 6 must agree.
    peaks = {n: h100_estimator.measure(case("gpt", "accumulated", 4, n, amp="bf16")).peak_allocated
             for n in (2, 3, 6)}
    assert peaks[2] == peaks[3] == peaks[6]
    assert peaks[2] < h100_estimator.measure(case("gpt", "large-batch", 24, amp="bf16")).peak_allocated


def test_estimated_sequential_backward_beats_combined_for_separate_models(h100_estimator):
    combined = h100_estimator.measure(case("two-models", "multitask-combined", 16, amp="bf16"))
    sequential = h100_estimator.measure(case("two-models", "multitask-sequential", 16, amp="bf16"))
    assert sequential.peak_allocated < combined.peak_allocated


def test_estimated_large_batch_peak_grows_linearly_with_batch():
    records = estimate_cases([case("gpt", "large-batch", b) for b in (8, 16, 24, 32)], assumptions_for("cpu"))
    peaks = [r.peak_allocated for r in records]
    steps = [b - a for a, b in zip(peaks, peaks[1:])]
    assert steps[0] > 0 and steps == [steps[0]] * 3


# --- what the CUDA assumptions add ---------------------------------------------------------------

def test_h100_estimate_adds_two_cublas_workspaces_and_one_cublaslt(h100_estimator):
    the_case = case("gpt", "large-batch", 4, amp="bf16")
    with_ws = h100_estimator.measure(the_case)
    no_ws = assumptions_for("h100", {"cublas_workspace_bytes": "0", "cublaslt_workspace_bytes": "0"})
    without = estimate_cases([the_case], no_ws)[0]
    # Forward and backward threads each keep a 32 MiB cuBLAS workspace; the forward's addmm with a
    # bias also keeps a 1 MiB cuBLASLt one.
    assert with_ws.peak_allocated - without.peak_allocated == 2 * 32 * MIB + 1 * MIB
    assert with_ws.baseline_allocated - without.baseline_allocated == 2 * 32 * MIB + 1 * MIB
    applied = with_ws.assumptions["applied"]
    assert "cublas-workspace x2" in applied and "cublaslt-workspace x1" in applied
    assert "flash-attention" in applied and "cuda-autocast-policy" in applied
    assert with_ws.assumptions["device_kind"] == "h100"
    assert with_ws.device_name.startswith("estimate: H100")


def test_the_cudnn_allowance_applies_to_convolutions_only():
    convnet = case("convnet-gn", "large-batch", 4, amp="bf16")
    with_allowance, without = (estimate_cases([convnet], assumptions_for("h100", {"cudnn_workspace_bytes": size}))[0]
                               for size in ("8MiB", "0"))
    assert with_allowance.peak_allocated - without.peak_allocated == 8 * MIB
    assert with_allowance.baseline_allocated == without.baseline_allocated  # per call, not kept
    assert "cudnn-workspace-allowance" in with_allowance.assumptions["applied"]
    mlp = estimate_cases([case("mlp", "large-batch", 4)], assumptions_for("h100"))[0]
    assert "cudnn-workspace-allowance" not in mlp.assumptions["applied"]


def test_allocator_rounding_only_adds_bytes():
    exact = assumptions_for("h100", {"allocator_round_bytes": "1"})
    records = estimate_cases([case("mlp", "accumulated", 3, 2)], exact) + \
        estimate_cases([case("mlp", "accumulated", 3, 2)], assumptions_for("h100"))
    assert records[1].peak_allocated > records[0].peak_allocated
    assert records[1].peak_allocated % 512 == 0


def test_math_attention_keeps_the_attention_matrix_and_flash_does_not():
    the_case = case("gpt", "large-batch", 8, amp="bf16")
    flash, math = (estimate_cases([the_case], assumptions_for("h100", {"attention_kernel": kernel}))[0]
                   for kernel in ("flash", "math"))
    assert "math-attention" in math.assumptions["applied"] and "flash-attention" in flash.assumptions["applied"]
    assert math.peak_allocated > flash.peak_allocated


def test_attention_kernel_choice_and_scratch():
    assert cuda_attention_kernel("auto", torch.bfloat16, 64, has_mask=False) == "flash"
    assert cuda_attention_kernel("auto", torch.float32, 64, has_mask=False) == "efficient"
    assert cuda_attention_kernel("auto", torch.bfloat16, 64, has_mask=True) == "efficient"
    assert cuda_attention_kernel("auto", torch.float64, 64, has_mask=False) == "math"
    assert cuda_attention_kernel("math", torch.bfloat16, 64, has_mask=False) == "math"
    query = torch.empty(2, 12, 500, 64, device="meta", dtype=torch.bfloat16)
    # dQ accumulator (2 x 512 x 12 x 64 fp32) + softmax row sums (2 x 12 x 512 fp32).
    assert attention_backward_scratch("flash", query) == 4 * (2 * 512 * 12 * 64 + 2 * 12 * 512)
    assert attention_backward_scratch("math", query) == 0


def test_cuda_autocast_policy_casts_as_cuda_and_restores_the_cpu_policy():
    x = torch.randn(2, 8, 4, 4).bfloat16()
    norm = torch.nn.GroupNorm(2, 8)
    with cuda_autocast_policy(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert norm(x).dtype == torch.float32  # CUDA runs group_norm in fp32
        assert x.softmax(-1).dtype == torch.float32  # fp32_set_opt_dtype: no input copy, fp32 out
        assert x.sum().dtype == torch.float32
        assert F.linear(x.float(), torch.randn(3, 4)).dtype == torch.bfloat16
        with pytest.raises(RuntimeError, match="unsafe to autocast"):
            F.binary_cross_entropy(torch.rand(3), torch.rand(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert norm(x).dtype == torch.bfloat16  # the CPU's own policy is back
        assert x.softmax(-1).dtype == torch.bfloat16


def test_cuda_autocast_policy_table_covers_the_installed_torch():
    registered = {n.split("::", 1)[1] for n in torch._C._dispatch_get_registrations_for_dispatch_key("AutocastCUDA")}
    assert registered - set(CUDA_AUTOCAST_POLICY) == set()


def test_a_peak_above_the_device_memory_is_a_predicted_oom():
    small = assumptions_for("h100", {"total_memory_bytes": "64MiB", "reserve_bytes": "0"})
    record = estimate_cases([case("mlp", "large-batch", 2)], small)[0]
    assert record.status == "oom" and record.peak_allocated > 64 * MIB  # two cuBLAS workspaces alone
    assert "exceeds the H100's usable 64.0 MiB (total 64.0 MiB less a 0 B reserve)" in record.error
    ok = dataclasses.replace(record, status="ok", error=None, peak_allocated=10)
    assert predicted_oom(ok, small) is ok


PLUGIN = """
import torch
from accumbench import Workload

class Branchy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 2)

    def forward(self, x):
        y = self.lin(x)
        if y.sum() > 0:  # reads an activation: its value depends on weights the estimate has not
            y = y * 2
        return y

def branchy():
    return Workload(name="branchy", build_model=Branchy,
                    make_batch=lambda n, g: (torch.randn(n, 4, generator=g), torch.randint(0, 2, (n,), generator=g)),
                    loss=lambda out, batch: torch.nn.functional.cross_entropy(out, batch[1]))
"""


def test_a_step_that_reads_data_is_an_error_record_and_others_go_on(tmp_path):
    plugin = tmp_path / "branchy.py"
    plugin.write_text(PLUGIN)
    cases = [Case(f"{plugin}:branchy", "large-batch", 4), case("mlp", "large-batch", 4)]
    failed, fine = estimate_cases(cases, assumptions_for("h100"))
    assert failed.status == "error" and failed.meter == "estimate"
    assert "cannot model aten._local_scalar_dense" in failed.error and "\n" not in failed.error
    assert fine.status == "ok"


# --- the log and its replays ---------------------------------------------------------------------

def _profile(events, start=0, flops=0):
    return StepProfile(events=tuple(events), step_start=start, gemm_threads=frozenset(),
                       lt_threads=frozenset(), attention_calls=(), flops=flops)


def test_replay_gives_baseline_peak_and_breakdown_with_rounding():
    events = [(NEW, 0, 1000, "params"),                      # adopted before the step
              (NEW, 1, 100, "activations"), (NEW, 2, 600, "other"), (MOVE, 2, "grads"),
              (FREE, 1), (RESIZE, 2, 1100), (FREE, 2)]
    exact = _profile(events, start=1).replay(assumptions_for("cpu"))
    assert (exact.baseline, exact.peak) == (1000, 2100)
    assert exact.breakdown == {"params": 1000, "grads": 1100, "optimizer": 0, "activations": 0, "other": 0}
    rounded = _profile(events, start=1).replay(assumptions_for("h100", {"cublas_workspace_bytes": "0"}))
    assert (rounded.baseline, rounded.peak) == (1024, 1024 + 1536)


def test_proportional_replays_linear_logs_and_refuses_others():
    low = _profile([(NEW, 0, 64, "params"), (NEW, 1, 2 * 40, "activations"), (FREE, 1)], 1, flops=20)
    high = _profile([(NEW, 0, 64, "params"), (NEW, 1, 8 * 40, "activations"), (FREE, 1)], 1, flops=80)
    at = proportional(low, 2, high, 8)
    assert at is not None and at(5).sizes() == [64, 200] and at(5).flops == 50
    square = _profile([(NEW, 0, 64, "params"), (NEW, 1, 64 * 40, "activations"), (FREE, 1)], 1)
    assert proportional(low, 2, square, 8) is None  # 4x the samples, 32x the bytes: not linear
    other = _profile([(NEW, 0, 64, "params"), (NEW, 1, 8 * 40, "other"), (FREE, 1)], 1)
    assert proportional(low, 2, other, 8) is None  # different events


# --- parsing -------------------------------------------------------------------------------------

def test_sizes_and_overrides_parse():
    assert parse_size("24GiB") == 24 * 2**30 and parse_size("24GB") == 24 * 10**9
    assert parse_size("80e9") == 80 * 10**9 and parse_size("512") == 512 and parse_size("1.5 MiB") == 1572864
    with pytest.raises(ValueError):
        parse_size("lots")
    assert parse_overrides(["a=1", " b = x "]) == {"a": "1", "b": "x"}
    with pytest.raises(ValueError):
        parse_overrides(["novalue"])
    a = assumptions_for("a100", {"attention_kernel": "math", "attention_scratch": "false", "scratch_bytes": "1MiB"})
    assert (a.attention_kernel, a.attention_scratch, a.scratch_bytes) == ("math", False, MIB)
    assert a.cublas_workspace_bytes == 4096 * 1024 * 2 + 16 * 1024 * 8
    for bad in ({"nope": "1"}, {"attention_kernel": "fast"}, {"attention_scratch": "maybe"}, {"gemm_threads": "-1"}):
        with pytest.raises(ValueError):
            assumptions_for("h100", bad)
    with pytest.raises(ValueError):
        assumptions_for("tpu")


def test_an_out_of_memory_while_estimating_is_an_error_not_a_predicted_oom(cpu_estimator, plugin_path):
    # Fake tensors allocate nothing: an OOM raised while estimating (the host's, making real host
    # batches) must not read as the estimate's prediction that the device runs out.
    record = cpu_estimator.measure(case(f"{plugin_path}:oom_above_8", "large-batch", 16, options=()))
    assert record.status == "error"
    assert record.error.startswith("out of memory on the host, not a predicted device OOM")
