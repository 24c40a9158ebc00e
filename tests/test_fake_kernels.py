"""What fake tensors cannot do, done for the estimate: fake kernels equal to the real op,
data-dependent ops resolved from known values, MoE routing from a named assumption, and a
one-line refusal naming the op for what cannot be modelled."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from accumbench.cases import Case
from accumbench.estimate import estimate_cases, estimate_runner
from accumbench.estimate_assumptions import assumptions_for
from accumbench.meters.fake_kernels import UnmodelledOp, grouped_mm
from accumbench.meters.known_values import KnownValues, routing_indices
from accumbench.runner import Runner

TOY = str(Path(__file__).parent / "workloads" / "toy_moe.py")


def layout(t: torch.Tensor) -> tuple:
    return tuple(t.shape), t.stride(), t.dtype, t.untyped_storage().nbytes()


# --- grouped_mm: the fake kernel allocates what the real CPU kernel allocates ------------------

GROUPED = [  # (mat_a, mat_b, offsets): 2D x 3D (MoE forward), 2D x 2D (weight gradient), 3D x 3D, 3D x 2D
    ((10, 16), (3, 16, 12), [3, 3, 10]),
    ((10, 16), (3, 16, 20), [3, 3, 10]),
    ((16, 10), (10, 12), [3, 3, 10]),
    ((3, 10, 16), (3, 16, 12), None),
    ((3, 10, 16), (16, 20), None),
    ((10, 8), (3, 8, 13), [3, 3, 10]),  # unaligned strides: the real kernel refuses them
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("a_shape,b_shape,offsets", GROUPED)
def test_grouped_mm_fake_kernel_allocates_what_the_real_kernel_does(dtype, a_shape, b_shape, offsets):
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(a_shape, generator=g).to(dtype), torch.randn(b_shape, generator=g).to(dtype)
    if len(a_shape) == 3 and len(b_shape) == 2:  # 3D x 2D: mat_b's columns split into groups
        b = torch.randn(b_shape[0], 3 * b_shape[1], generator=g).to(dtype)
        offsets = [b_shape[1], 2 * b_shape[1], 3 * b_shape[1]]
        a = torch.randn(3, a_shape[1], a_shape[2], generator=g).to(dtype)
    offs = torch.tensor(offsets, dtype=torch.int32) if offsets else None
    try:
        real = layout(torch._grouped_mm(a, b, offs))
    except RuntimeError:
        real = None
    mode = FakeTensorMode()
    with mode:
        fa, fb = mode.from_tensor(a), mode.from_tensor(b)
        fo = mode.from_tensor(offs) if offs is not None else None
        try:
            fake = layout(grouped_mm(fa, fb, fo))
        except RuntimeError:
            fake = None
    assert fake == real


def test_grouped_mm_runs_in_fp32_under_the_estimate():
    a, w, offs = torch.randn(10, 16), torch.randn(3, 12, 16, requires_grad=True), torch.tensor([3, 3, 10], dtype=torch.int32)
    with FakeTensorMode(allow_non_fake_inputs=True), KnownValues():
        fw = torch.empty(3, 12, 16, requires_grad=True)
        y = torch.nn.functional.grouped_mm(a, fw.transpose(-2, -1), offs=offs)
        (y * y).sum().backward()
        assert fw.grad.shape == w.shape and y.dtype == torch.float32


# --- data-dependent ops from known values --------------------------------------------------------

def test_data_dependent_ops_take_the_real_result_sizes_and_bytes():
    mask = torch.tensor([[0, 3, 0, 2], [1, 0, 0, 0]])
    with FakeTensorMode(allow_non_fake_inputs=True), KnownValues():
        known = mask * 2  # fake, value known
        nonzero, rows, unique = torch.nonzero(known), torch.where(known > 0)[0], torch.unique(known)
        count = int((known > 0).sum().item())
    assert layout(nonzero) == layout(torch.nonzero(mask * 2))
    assert layout(rows) == layout(torch.where(mask > 0)[0]) and layout(unique) == layout(torch.unique(mask * 2))
    assert count == 3


def test_routing_assumptions():
    balanced = routing_indices((6, 4), -1, 4, 2, "balanced")
    assert balanced.tolist() == [[0, 1], [2, 3], [0, 1], [2, 3], [0, 1], [2, 3]]
    assert torch.bincount(balanced.flatten(), minlength=4).tolist() == [3, 3, 3, 3]
    assert routing_indices((6, 4), -1, 4, 2, "worst").tolist() == [[0, 1]] * 6
    with pytest.raises(ValueError, match="moe_routing"):
        assumptions_for("cpu", {"moe_routing": "random"})
    assert assumptions_for("h100", {"moe_routing": "worst"}).describe()["moe_routing"] == "worst"


# --- MoE routing: the estimate equals the cpu meter where the cpu meter's routing is the assumption -

def toy_case(route: str, scenario: str = "accumulated", accum: int = 2) -> Case:
    return Case(f"{TOY}:build", scenario, 2, accum, (("route", route),), warmup=1, steps=1)


@pytest.mark.parametrize("routing", ["balanced", pytest.param("worst", marks=pytest.mark.slow)])
def test_moe_estimate_is_byte_equal_when_the_routing_is_the_assumption(routing):
    the_case = toy_case(routing)
    measured = Runner(torch.device("cpu")).measure(the_case)
    estimated = estimate_runner(assumptions_for("cpu", {"moe_routing": routing})).measure(the_case)
    assert measured.status == estimated.status == "ok", (measured.error, estimated.error)
    assert (estimated.peak_allocated, estimated.baseline_allocated, estimated.breakdown) == (
        measured.peak_allocated, measured.baseline_allocated, measured.breakdown)
    assert estimated.assumptions["moe_routing"] == routing
    peaks = estimated.assumptions["moe_routing_peaks"]
    assert set(peaks) == {"balanced", "worst"} and peaks[routing] == estimated.peak_allocated
    assert f"moe-routing-{routing}" in estimated.assumptions["applied"]


@pytest.mark.slow
def test_moe_routing_bounds_differ_and_grouped_estimates_state_them():
    cases = [toy_case("learned", "large-batch", 1), toy_case("learned")]
    records = estimate_cases(cases, assumptions_for("cpu"))
    assert [r.status for r in records] == ["ok", "ok"]
    peaks = records[1].assumptions["moe_routing_peaks"]
    assert peaks["balanced"] != peaks["worst"], "routing decides sizes here: the bounds differ"
    assert records[1].peak_allocated == peaks["balanced"]
    # The report's memory table shows both bounds beside the peak.
    from accumbench.records import records_to_frame
    from accumbench.report.data import prepare
    from accumbench.report.tables import memory_table

    cells = memory_table(prepare(records_to_frame(records))[0]).column("peak allocated")
    assert sum("MoE routing: balanced" in cell.text and "worst" in cell.text for cell in cells) == 1


def test_a_step_without_routing_states_the_assumption_and_no_bounds():
    record = estimate_runner(assumptions_for("cpu")).measure(
        Case("mlp", "large-batch", 2, 1, (("size", "tiny"),), warmup=1, steps=1))
    assert record.status == "ok" and record.assumptions["moe_routing"] == "balanced"
    assert "moe_routing_peaks" not in record.assumptions


# --- what cannot be modelled: one line naming the op ----------------------------------------------

def test_reading_an_activation_value_is_refused_in_one_line_naming_the_op():
    record = estimate_runner(assumptions_for("cpu")).measure(
        Case(f"{TOY}:reads_activations", "large-batch", 2, 1, warmup=1, steps=1))
    assert record.status == "error"
    assert "\n" not in record.error
    assert record.error.startswith("UnmodelledOp: the estimate cannot model aten._local_scalar_dense (.item())")


@torch.library.custom_op("accumbench_test::opaque", mutates_args=())
def opaque(x: torch.Tensor) -> torch.Tensor:
    return x.clone()


def test_an_op_without_fake_kernel_is_refused_naming_the_op():
    values = KnownValues()
    with FakeTensorMode(allow_non_fake_inputs=True), values:
        weight = torch.empty(4, 4)
        values.forget([weight])  # value unknown, as a model's weights are
        with pytest.raises(UnmodelledOp, match=r"^the estimate cannot model accumbench_test\.opaque: ") as caught:
            opaque(weight)
        assert "\n" not in str(caught.value)
        assert opaque(torch.ones(2)).shape == (2,)  # known values: it runs for real
