"""The levers beside accumulation (accumbench.levers): memory relations on the cpu meter (live
tensor bytes, repeatable to the byte), the estimate equal to the cpu meter with each lever,
check's gradients unchanged by checkpointing (dropout on) and freezing, and compile time kept
out of step times."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

from accumbench.cases import Case, SuiteError, case_id
from accumbench.equivalence import CheckConfig, check_workload
from accumbench.equivalence.gradients import step_gradients
from accumbench.estimate import estimate_cases
from accumbench.estimate_assumptions import assumptions_for
from accumbench.levers import (
    LeverError,
    Levers,
    LoRALinear,
    apply_levers,
    checkpointed_modules,
    matching_parameters,
    parse_lora,
    with_levers,
)
from accumbench.runner import Runner
from accumbench.workloads import Workload, load_workload
from accumbench.workloads.vision import classification_loss

TINY = (("size", "tiny"),)


@pytest.fixture(scope="module")
def runner() -> Runner:
    return Runner(torch.device("cpu"))


def measure(runner: Runner, scenario: str, micro: int, accum: int = 1, workload: str = "gpt", **levers):
    record = runner.measure(Case(workload, scenario, micro, accum, TINY, warmup=2, steps=1, **levers))
    assert record.status == "ok", record.error
    return record


def saved_activation_bytes(block: nn.Module, block_input: torch.Tensor) -> tuple[int, int]:
    """Bytes of the distinct non-parameter storages a block's forward saves for backward, and
    the bytes of its input among them (what the checkpoint keeps instead)."""
    params = {p.untyped_storage().data_ptr() for p in block.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        block(block_input)
    return sum(saved.values()), saved.get(block_input.untyped_storage().data_ptr(), 0)


def gpt_block_savings(micro: int) -> list[int]:
    """Per GPT-tiny block: saved activations less its input, at this micro-batch."""
    workload = load_workload("gpt", dict(TINY))
    torch.manual_seed(0)
    model = workload.build_model()
    tokens = workload.make_batch(micro, torch.Generator().manual_seed(0))[0]
    h = model.wte(tokens) + model.wpe(torch.arange(tokens.shape[1]))
    savings = []
    for block in model.blocks:
        total, kept = saved_activation_bytes(block, h)
        assert kept > 0  # the block's input is among what it saves
        savings.append(total - kept)
        h = block(h)
    return savings


# --- activation checkpointing ------------------------------------------------------------------

def test_checkpointing_a_block_recomputed_after_the_peak_saves_its_activations_less_its_input(runner):
    savings = gpt_block_savings(8)
    eager = measure(runner, "large-batch", 8).peak_allocated
    first = measure(runner, "large-batch", 8, checkpoint="blocks.0").peak_allocated
    # The peak is where backward starts, every activation alive. Checkpointed, block 0 keeps
    # only its input; its recomputation comes last in backward, long after that peak, so the
    # peak falls by exactly what the block saved less the input it still keeps.
    assert eager - first == savings[0] > 0


@pytest.mark.slow
def test_checkpointing_saving_scales_with_the_micro_batch(runner):
    assert measure(runner, "large-batch", 16).peak_allocated - \
        measure(runner, "large-batch", 16, checkpoint="blocks.0").peak_allocated == 2 * gpt_block_savings(8)[0]


@pytest.mark.slow
def test_checkpointing_every_block_saves_all_less_one_recomputation(runner):
    savings = gpt_block_savings(8)
    eager = measure(runner, "large-batch", 8).peak_allocated
    blocks = measure(runner, "large-batch", 8, checkpoint="blocks").peak_allocated
    recomputation = sum(savings) - (eager - blocks)
    # The last block is recomputed while the head's gradients are live, so the peak moves into
    # the backward: it falls by every block's saving less that recomputation's own bytes, which
    # hold at most one block's saved activations (blocks are recomputed one at a time).
    assert 0 < recomputation <= max(savings) + gpt_block_input_bytes(8)
    assert blocks < measure(runner, "large-batch", 8, checkpoint="blocks.0").peak_allocated < eager


def gpt_block_input_bytes(micro: int) -> int:
    cfg = load_workload("gpt", dict(TINY))
    return micro * cfg.tokens_per_sample * 64 * 4  # (micro, seq, d_model) fp32


@pytest.mark.slow
def test_checkpoint_blocks_means_each_builtin_block(runner):
    for name, expected in (("gpt", ["blocks.0", "blocks.1"]), ("convnet-bn", ["features.0", "features.1"])):
        workload = with_levers(load_workload(name, dict(TINY)), Levers(checkpoint="blocks"))
        assert checkpointed_modules(workload.build_model()) == expected
    trunks = with_levers(load_workload("two-models", dict(TINY)), Levers(checkpoint="blocks")).build_model()
    assert len(checkpointed_modules(trunks)) == 4  # two trunks of two blocks
    with pytest.raises(LeverError, match="does not say what its blocks are"):
        with_levers(load_workload("mlp", dict(TINY)), Levers(checkpoint="blocks")).build_model()
    convnet = measure(runner, "large-batch", 16, workload="convnet-gn").peak_allocated
    assert measure(runner, "large-batch", 16, workload="convnet-gn", checkpoint="blocks").peak_allocated < convnet


def test_a_pattern_matching_a_container_checkpoints_the_blocks_in_it():
    # 'blocks*' matched the ModuleList itself, whose forward never runs: nothing was checkpointed
    # and the peak was the eager one, without a word.
    model = with_levers(load_workload("gpt", dict(TINY)), Levers(checkpoint="blocks*")).build_model()
    assert checkpointed_modules(model) == ["blocks.0", "blocks.1"]
    with pytest.raises(LeverError, match=r"matches no module .*; 'blocks' is a ModuleList, whose forward never "
                                         r"runs: give its members, e.g. 'blocks\.\*'$"):
        with_levers(load_workload("gpt", dict(TINY)), Levers(checkpoint="ModuleList")).build_model()


def test_an_alternative_that_matches_nothing_is_a_warning_said_once(tmp_path):
    from click.testing import CliRunner

    from accumbench.cli import main
    from accumbench.levers import unmatched_alternatives

    model = load_workload("gpt", dict(TINY)).build_model()
    # 'h.1' is GPT-2's name for a block; here blocks are blocks.N: only lm_head would train.
    assert unmatched_alternatives(model, Levers(trainable="h.1|lm_head")) == [
        "--trainable 'h.1|lm_head': 'h.1' matches no parameter of the model (the other alternatives do)"]
    assert unmatched_alternatives(model, Levers(lora="r=2,targets=qkv|q_proj", checkpoint="Block|Layer")) == [
        "--checkpoint 'Block|Layer': 'Layer' matches no module of the model (the other alternatives do)",
        "--lora targets 'qkv|q_proj': 'q_proj' matches no linear layer of the model (the other alternatives do)"]
    assert unmatched_alternatives(model, Levers(freeze="wte|lm_head", checkpoint="blocks.*")) == []
    # An adapter's name matches in the levered model, where the adapters are.
    levers = Levers(lora="r=2,targets=qkv", trainable="*.lora_B|lm_head")
    assert unmatched_alternatives(model, levers, None, with_levers(load_workload("gpt", dict(TINY)),
                                                                   levers).build_model()) == []
    result = CliRunner().invoke(main, ["run", "--device", "cpu", "--workload", "gpt", "--workload-opt", "size=tiny",
                                       "--micro-batch", "2,4", "--trainable", "h.1|lm_head", "--list",
                                       "--out", str(tmp_path / "r.jsonl")])
    assert result.exit_code == 0, result.output
    assert result.output.count("warning: --trainable 'h.1|lm_head': 'h.1' matches no parameter") == 1


def test_a_layer_under_two_names_is_one_layer_to_every_lever(plugin_path):
    from accumbench.levers import LoRALinear

    workload = load_workload(f"{plugin_path}:shared_layer")
    for name in ("a", "b"):
        model = with_levers(workload, Levers(lora=f"r=2,targets={name}")).build_model()
        # Both names hold the adapter: the second call did bypass it, through the frozen base.
        assert isinstance(model.a, LoRALinear) and model.b is model.a
        assert {n for n, p in model.named_parameters() if p.requires_grad} == {"a.lora_A", "a.lora_B"}
        model = with_levers(workload, Levers(checkpoint=name, freeze=name)).build_model()
        assert checkpointed_modules(model) == ["a"] and not model.b.weight.requires_grad


def test_patterns_match_names_last_components_and_classes():
    model = load_workload("gpt", dict(TINY)).build_model()
    assert set(matching_parameters(model, "blocks.0.attn")) == {
        "blocks.0.attn.qkv.weight", "blocks.0.attn.qkv.bias", "blocks.0.attn.proj.weight", "blocks.0.attn.proj.bias"}
    assert len(matching_parameters(model, "CausalSelfAttention")) == 8
    assert set(matching_parameters(model, "*.bias|wte")) >= {"wte.weight", "blocks.1.mlp.2.bias"}
    # A tied weight is one parameter: freezing the head freezes the embedding too.
    frozen = apply_levers(load_workload("gpt", dict(TINY)).build_model(), Levers(freeze="lm_head"))
    assert not frozen.wte.weight.requires_grad


# --- frozen parameters and LoRA -----------------------------------------------------------------

def trainable_grad_bytes(levers: Levers) -> int:
    model = with_levers(load_workload("gpt", dict(TINY)), levers).build_model()
    return sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("levers", [
    pytest.param({"lora": "r=4,targets=qkv|proj"}, marks=pytest.mark.slow),
    pytest.param({"freeze": "blocks.0|wte|wpe"}, marks=pytest.mark.slow),
    pytest.param({"trainable": "lm_head|ln_f"}, marks=pytest.mark.slow),
    pytest.param({"lora": "r=2,targets=*.mlp.*", "checkpoint": "blocks"}, marks=pytest.mark.slow),
])
def test_accumulation_adds_the_gradients_of_the_trainable_parameters_only(runner, levers):
    large = measure(runner, "large-batch", 8, **levers)
    accumulated = measure(runner, "accumulated", 8, 4, **levers)
    grads = trainable_grad_bytes(Levers(**levers))
    assert 0 < grads < trainable_grad_bytes(Levers(freeze="wpe"))  # far fewer than all parameters
    assert accumulated.peak_allocated - large.peak_allocated == grads
    assert accumulated.breakdown["grads"] == grads
    assert accumulated.trainable_parameters * 4 == grads


@pytest.mark.slow
def test_frozen_parameters_get_no_optimizer_state(runner):
    record = measure(runner, "large-batch", 8, trainable="lm_head")
    grads = trainable_grad_bytes(Levers(trainable="lm_head"))
    # AdamW: exp_avg and exp_avg_sq of the one trainable (tied) weight, and its 4-byte step.
    assert record.breakdown["optimizer"] == 2 * grads + 4


def test_lora_wraps_matching_linears_with_frozen_bases():
    model = apply_levers(load_workload("gpt", dict(TINY)).build_model(), Levers(lora="r=4,targets=qkv,alpha=8"))
    adapters = [m for m in model.modules() if isinstance(m, LoRALinear)]
    assert len(adapters) == 2 and adapters[0].scaling == 2.0
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"blocks.{i}.attn.qkv.{f}" for i in (0, 1) for f in ("lora_A", "lora_B")}
    x = torch.randn(3, 64)
    # B starts at zero: the adapted layer computes what the base layer does.
    assert torch.equal(adapters[0](x), adapters[0].base(x))


def test_bad_lever_settings_are_one_line_errors():
    with pytest.raises(LeverError, match="r=N and targets"):
        parse_lora("r=8")
    for alpha in ("nan", "inf", "0"):  # a NaN scale trained to a NaN loss on run, and estimated fine
        with pytest.raises(LeverError, match="a finite alpha > 0"):
            parse_lora(f"r=2,targets=qkv,alpha={alpha}")
    with pytest.raises(LeverError, match="matches only LoRA adapters, which train anyway"):
        apply_levers(load_workload("gpt", dict(TINY)).build_model(),
                     Levers(lora="r=2,targets=qkv", trainable="*.lora_B"))
    with pytest.raises(LeverError, match="targets is given twice"):
        parse_lora("r=2,targets=qkv,targets=proj")
    with pytest.raises(LeverError, match=r"separate targets with '\|', e.g. targets=qkv\|proj"):
        parse_lora("r=2,targets=qkv,proj")  # peft's list, not ours
    with pytest.raises(SuiteError, match="unknown key"):
        Case("gpt", "large-batch", 4, lora="r=8,targets=x,rank=3")
    with pytest.raises(LeverError, match="matches no parameter"):
        apply_levers(load_workload("gpt", dict(TINY)).build_model(), Levers(freeze="nothing_here"))
    with pytest.raises(LeverError, match="no trainable parameter"):
        apply_levers(load_workload("gpt", dict(TINY)).build_model(), Levers(freeze="*"))
    # A checkpoint pattern that matches nothing names the model's repeated modules (blocks repeat).
    with pytest.raises(LeverError, match=r"matches no module .*; its repeated modules: Block x2, "
                                         r"CausalSelfAttention x2, Sequential x2$"):
        apply_levers(load_workload("gpt", dict(TINY)).build_model(), Levers(checkpoint="DecoderLayer"))
    # A LoRA target that names no linear layer: the error names those there are to target.
    with pytest.raises(LeverError, match=r"matches no linear layer .*; its linear layers are named 0, 2, lm_head, "
                                         r"proj, qkv$"):
        apply_levers(load_workload("gpt", dict(TINY)).build_model(), Levers(lora="r=4,targets=q_proj"))
    # MultiheadAttention never calls its out_proj: an adapter there would never run.
    encoder = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True)
    with pytest.raises(LeverError, match=r"cannot adapt self_attn.out_proj: nn.MultiheadAttention reads"):
        apply_levers(encoder, Levers(lora="r=2,targets=out_proj|linear1"))
    assert {n for n, p in apply_levers(encoder, Levers(lora="r=2,targets=linear1")).named_parameters()
            if p.requires_grad} == {"linear1.lora_A", "linear1.lora_B"}


def test_case_ids_carry_levers_only_when_on():
    plain = Case("gpt", "accumulated", 8, 4, TINY)
    assert case_id("gpt-tiny", plain, "AdamW(foreach)") == \
        "gpt-tiny/accumulated/mb8/acc4/amp-none/set_to_none/norm-mean/AdamW(foreach)"
    levered = dataclasses.replace(plain, checkpoint="blocks", lora="targets=qkv,r=8", compile=True)
    assert case_id("gpt-tiny", levered, "AdamW(foreach)").endswith("/ckpt-blocks/lora-r=8,targets=qkv/compile")


# --- the estimate equals the cpu meter with each lever -----------------------------------------

@pytest.mark.parametrize("levers", [
    pytest.param({"lora": "r=4,targets=qkv|proj", "checkpoint": "blocks.1"}, marks=pytest.mark.slow),
    pytest.param({"checkpoint": "blocks"}, marks=pytest.mark.slow),
    pytest.param({"freeze": "blocks.0|wte|wpe"}, marks=pytest.mark.slow),
])
def test_cpu_kind_estimate_equals_the_cpu_meter_with_levers(runner, levers):
    cases = [Case("gpt", scenario, 8, accum, TINY, warmup=2, steps=1, **levers)
             for scenario, accum in (("large-batch", 1), ("accumulated", 2))]
    estimated = estimate_cases(cases, assumptions_for("cpu"))
    for case, estimate in zip(cases, estimated):
        measured = runner.measure(case)
        assert estimate.status == measured.status == "ok", (estimate.error, measured.error)
        assert estimate.case_id == measured.case_id
        assert (estimate.peak_allocated, estimate.baseline_allocated, estimate.breakdown) == \
            (measured.peak_allocated, measured.baseline_allocated, measured.breakdown)


def test_estimate_refuses_compile_with_its_reason():
    (record,) = estimate_cases([Case("gpt", "large-batch", 4, 1, TINY, compile=True)], assumptions_for("cpu"))
    assert record.status == "error" and "does not predict --compile" in record.error


# --- check: gradients unchanged by checkpointing (dropout on) and freezing ----------------------

class DropoutBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(16, 16)
        self.dropout = nn.Dropout(0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.relu(self.dropout(self.linear(x)))


def dropout_workload() -> Workload:
    def make_batch(n, generator):
        return torch.randn(n, 16, generator=generator), torch.randint(0, 4, (n,), generator=generator)

    return Workload(name="dropout-mlp", make_batch=make_batch, loss=classification_loss,
                    build_model=lambda: nn.Sequential(DropoutBlock(), DropoutBlock(), nn.Linear(16, 4)))


def test_checkpointing_preserves_dropout_masks_so_gradients_are_unchanged():
    workload = dropout_workload()
    batches = [workload.make_batch(4, torch.Generator().manual_seed(s)) for s in (1, 2)]
    grads = {}
    for label, levers in (("eager", Levers()), ("checkpointed", Levers(checkpoint="DropoutBlock"))):
        torch.manual_seed(0)
        model = with_levers(workload, levers).build_model()
        torch.manual_seed(1)
        grads[label] = step_gradients(workload, model, batches, [0.5, 0.5])
    assert grads["eager"].keys() == grads["checkpointed"].keys()
    for name, value in grads["eager"].items():
        assert torch.equal(value, grads["checkpointed"][name]), name


def test_check_results_are_unchanged_by_checkpointing_and_freezing():
    config = CheckConfig(accum_steps=(2,), loss_norm="mean", optimizer_step=False, grad_scaler=False)
    workload = dropout_workload()
    eager = check_workload(workload, config)
    checkpointed = check_workload(with_levers(workload, Levers(checkpoint="DropoutBlock")), config)
    assert [c.kind for c in eager[0].causes] == ["dropout"]  # different masks, as in training
    assert [(r.rel_error, r.verdict) for r in checkpointed] == [(r.rel_error, r.verdict) for r in eager]
    frozen = check_workload(with_levers(workload, Levers(freeze="0", checkpoint="DropoutBlock")), config)
    assert frozen[0].rel_error > 0 and frozen[0].explained


@pytest.mark.slow
def test_check_stays_equivalent_on_gpt_with_each_lever():
    config = CheckConfig(accum_steps=(2,), loss_norm="mean", optimizer_step=False, grad_scaler=False)
    for levers in (Levers(checkpoint="blocks"), Levers(freeze="blocks.0|wte"), Levers(lora="r=2,targets=qkv")):
        (result,) = check_workload(with_levers(load_workload("gpt", dict(TINY)), levers), config)
        assert result.verdict == "equivalent", levers


# --- compile -------------------------------------------------------------------------------------

@pytest.mark.slow
def test_compiled_case_records_compile_time_apart_from_step_times(runner):
    record = runner.measure(Case("mlp", "accumulated", 4, 2, TINY, warmup=1, steps=3, compile=True))
    assert record.status == "ok", record.error
    assert record.compile and record.case_id.endswith("/compile")
    assert record.compile_time_s > 0
    # The compile step ran before the meter: no measured step includes compilation.
    assert max(record.step_times_s) < record.compile_time_s
    assert "eager step" in record.lever_note  # what the cpu meter's peak means here
    eager = measure(runner, "accumulated", 4, 2, workload="mlp")
    assert record.peak_allocated == eager.peak_allocated


@pytest.mark.slow  # compiles two cases: ~15 s on 2 cores
def test_a_compiled_cases_timed_steps_run_compiled_in_every_case_of_a_process(runner, plugin_path, monkeypatch):
    # Under the cpu meter's tracker (a dispatch mode) a compiled forward falls back to eager, and
    # stayed eager for the rest of the process: the timed steps, and every later compiled case.
    import sys

    import accumbench.meters.cpu as cpu_meter

    during_timing = []
    timed_steps = cpu_meter.timed_steps

    def eager_forwards() -> int:  # the plug-in's module, as accumbench loaded it
        return sum(vars(m)["_CountsEagerForwards"].eager_forwards for m in list(sys.modules.values())
                   if "_CountsEagerForwards" in getattr(m, "__dict__", {}))

    def counting(timer, step, steps):
        before = eager_forwards()
        try:
            return timed_steps(timer, step, steps)
        finally:
            during_timing.append(eager_forwards() - before)

    monkeypatch.setattr(cpu_meter, "timed_steps", counting)
    for micro in (4, 8):
        record = runner.measure(Case(f"{plugin_path}:counts_eager_forwards", "large-batch", micro, 1,
                                     warmup=1, steps=5, compile=True))
        assert record.status == "ok" and record.compile_time_s > 0, record.error
    assert during_timing == [0, 0]
    assert eager_forwards() > 0  # the tracked steps did run eagerly


# --- report ----------------------------------------------------------------------------------------

def lever_record(peak: int, step_s: float, **levers) -> "Record":
    from accumbench.records import Record

    return Record(
        run_id="r1", case_id="gpt-tiny/accumulated/mb8/acc4/" + "/".join(Levers(**levers).id_parts()),
        workload="gpt-tiny", scenario="accumulated", micro_batch=8, accum_steps=4, effective_batch=32,
        amp="none", set_to_none=True, optimizer="AdamW(foreach)", meter="cpu", device_name="cpu",
        peak_allocated=peak, step_times_s=tuple(step_s * (1 + 0.01 * math.sin(k)) for k in range(8)),
        samples_per_s=32 / step_s,
        compile_time_s=12.5 if levers.get("compile") else None, **levers)


def test_report_puts_each_lever_beside_its_eager_twin():
    from accumbench.records import records_to_frame
    from accumbench.report.data import prepare
    from accumbench.report.levers import levers_figure, levers_findings, levers_table

    frame, _ = prepare(records_to_frame([lever_record(4_000_000, 0.10), lever_record(3_000_000, 0.125, checkpoint="blocks"),
                                         lever_record(4_000_000, 0.08, compile=True)]))
    table = levers_table(frame)
    by_lever = {row[1].text: row for row in table.rows}
    assert set(by_lever) == {"ckpt-blocks", "compile"}
    assert by_lever["ckpt-blocks"][5].value == -1_000_000
    # 32/0.125 vs 32/0.10 samples/s, with its interval: a ratio, never a bare change.
    assert by_lever["ckpt-blocks"][8].value == pytest.approx(0.8, rel=0.01)
    assert by_lever["ckpt-blocks"][8].text.startswith("0.80× [")
    assert by_lever["compile"][9].value == 12.5
    findings = levers_findings(frame)
    assert any("compiling took" in s for s in findings)
    assert any(s.startswith("ckpt-blocks on ") and ", throughput: 0.80× [" in s and "] of eager." in s for s in findings)
    # A lever whose speed cannot be told from eager's says so.
    tie, _ = prepare(records_to_frame([lever_record(4_000_000, 0.10), lever_record(3_000_000, 0.1002, checkpoint="blocks")]))
    (row,) = levers_table(tie).rows
    assert row[8].value is None and row[8].text.startswith("no measurable difference (")
    figure = levers_figure(frame)
    assert [len(ax.containers) for ax in figure.axes] == [3, 3]  # eager, ckpt-blocks, compile
    # Lines in the memory figure are told apart by their levers, not drawn on one another.
    assert frame["line"].nunique() == 3
    # ... named by the levers that are on, never by the unset ones ("lora=nan").
    assert sorted(frame["variant"]) == ["ckpt-blocks", "compile", "eager"]


def test_levers_figure_draws_only_what_ran_and_no_speed_panel_for_estimates():
    import dataclasses

    from accumbench.records import records_to_frame
    from accumbench.report.data import prepare
    from accumbench.report.levers import levers_figure

    eager, ckpt = lever_record(4_000_000, 0.10), lever_record(3_000_000, 0.125, checkpoint="blocks")
    failed = [dataclasses.replace(r, status="error", error="boom", peak_allocated=None) for r in (eager, ckpt)]
    assert levers_figure(prepare(records_to_frame(failed))[0]) is None  # nothing ran: no empty axes
    # Estimates have no measured samples/s: one panel, and a predicted OOM gets no bar.
    estimated = [dataclasses.replace(r, meter="estimate", device_name="estimate: H100") for r in (eager, ckpt)]
    estimated[0] = dataclasses.replace(estimated[0], status="oom", error="predicted peak exceeds the device")
    figure = levers_figure(prepare(records_to_frame(estimated))[0])
    (memory_ax,) = figure.axes
    widths = [bar.get_width() for container in memory_ax.containers for bar in container]
    assert widths == [0.0, pytest.approx(3_000_000 / 2**20)]  # eager OOM, ckpt-blocks in MiB
    # A section of levered records without their eager twins: no "eager" legend entry without bars.
    figure = levers_figure(prepare(records_to_frame([ckpt, lever_record(3_500_000, 0.09, compile=True)]))[0])
    assert [container.get_label() for container in figure.axes[0].containers] == ["ckpt-blocks", "compile"]


# --- plan across levers ------------------------------------------------------------------------------

def test_plan_across_levers_recommends_what_fits_and_says_what_checkpointing_costs():
    from types import SimpleNamespace

    from accumbench.lever_plan import LeverOption, format_exploration, lever_costs
    from accumbench.plan import make_plan, observations_from_records

    MiB = 2**20

    def rec(micro, accum, peak, speed, flops):
        return SimpleNamespace(micro_batch=micro, accum_steps=accum, status="ok", peak_allocated=peak,
                               samples_per_s=speed, flops_per_step=flops, parameters=None, meter="cpu",
                               step_times_s=(), assumptions=None)

    eager = [rec(m, 16 // m, (100 + 50 * m) * MiB, 10.0 * m, 300) for m in (1, 2, 4, 8, 16)]
    ckpt = [rec(m, 16 // m, (100 + 10 * m) * MiB, 7.5 * m, 400) for m in (1, 2, 4, 8, 16)]
    options = [LeverOption(label, make_plan(16, 400 * MiB, observations_from_records(r), 0.0), None, r)
               for label, r in (("eager", eager), ("ckpt-blocks", ckpt))]
    assert options[0].plan.recommended.micro_batch == 4 and options[1].plan.recommended.micro_batch == 16
    costs = lever_costs(eager, ckpt)
    assert [c.peak_change for c in costs] == [-40 * m * MiB for m in (1, 2, 4, 8, 16)]
    text = format_exploration(options)
    # 7.5 vs 10 samples/s per sample: step time x4/3. The fastest that fits: checkpointed 16 x 1.
    assert "checkpointing: -640 MiB at micro-batch 16" in text and "~+33% step time" in text
    assert "recommended across levers: ckpt-blocks, micro-batch 16 x 1" in text
    assert "no interval" in text  # measured records without step times: no interval to give


def _lever_records(meter, eager_speed, ckpt_speed, error=None, times=None):
    """Eager and checkpointed records of 16 = m x 16/m with the given per-sample speeds."""
    from types import SimpleNamespace

    MiB = 2**20

    def rec(micro, peak, speed):
        steps = times(micro, speed) if times else ()
        return SimpleNamespace(micro_batch=micro, accum_steps=16 // micro, status="ok", peak_allocated=peak,
                               samples_per_s=speed * micro, flops_per_step=None, parameters=None, meter=meter,
                               step_times_s=steps, assumptions={"speed_ratio_error": error} if error else None)

    eager = [rec(m, (100 + 50 * m) * MiB, eager_speed) for m in (1, 2, 4, 8, 16)]
    ckpt = [rec(m, (100 + 10 * m) * MiB, ckpt_speed) for m in (1, 2, 4, 8, 16)]
    return eager, ckpt


def _exploration(eager, ckpt, budget_mib=2000):
    from accumbench.lever_plan import LeverOption, format_exploration
    from accumbench.plan import make_plan, observations_from_records

    return format_exploration([LeverOption(label, make_plan(16, budget_mib * 2**20, observations_from_records(r), 0.0),
                                           None, r) for label, r in (("eager", eager), ("ckpt-blocks", ckpt))])


def test_a_predicted_lever_cost_carries_the_step_time_models_error():
    from accumbench.lever_plan import lever_costs

    # Step time x4/3 with the lever; the model's ratio error x1.2 keeps the cost known...
    eager, ckpt = _lever_records("estimate", 10.0, 7.5, error=1.2)
    ratio = lever_costs(eager, ckpt)[-1].time_ratio
    assert ratio.value == pytest.approx(4 / 3) and (ratio.low, ratio.high) == pytest.approx((4 / 3 / 1.2, 4 / 3 * 1.2))
    text = _exploration(eager, ckpt)
    assert "+33% step time there (1.11-1.6x; median +33% over the 5)" in text
    assert "recommended across levers: eager, micro-batch 16 x 1\n" in text + "\n"  # the two are told apart
    # The user's own bound (plan --results --assume speed_ratio_error=3) replaces the records' one.
    wide = lever_costs(eager, ckpt, speed_error=3.0)[-1].time_ratio
    assert (wide.low, wide.high) == pytest.approx((4 / 3 / 3, 4 / 3 * 3))
    # ... x1.5 holds no cost: said so, and the recommendation names what each needs in memory.
    eager, ckpt = _lever_records("estimate", 10.0, 7.5, error=1.5)
    text = _exploration(eager, ckpt)
    assert "+33% step time there, within the step-time model's error of no cost (0.889-2x" in text
    assert ("the ckpt-blocks plan's 16 x 1 is within the step-time model's error of it (0.889-2x) "
            "and needs 260 MiB against 900 MiB") in text


def test_a_measured_lever_cost_carries_its_bootstrap_interval():
    import numpy as np

    def times(micro, speed):  # 20 steps, +-1% around the step time of 16 samples at speed x micro samples/s
        return tuple(16 / (speed * micro) * (1 + 0.01 * np.sin(np.arange(20))))

    eager, ckpt = _lever_records("cuda", 10.0, 7.5, times=times)
    text = _exploration(eager, ckpt)
    assert "+33% step time there (" in text and ", 95% interval; median +33% over the 5)" in text
    eager, ckpt = _lever_records("cuda", 10.0, 9.95, times=times)  # 0.5% apart: inside the noise
    text = _exploration(eager, ckpt)
    assert "+1% step time there, not measurably different from no cost (" in text
    assert "the ckpt-blocks plan's 16 x 1 is not measurably slower" in text
    assert "checkpointing only adds work" not in text
    # A checkpointed step measured 4x faster than its eager twin (a noisy eager run): said, not believed.
    eager, ckpt = _lever_records("cuda", 10.0, 40.0, times=times)
    text = _exploration(eager, ckpt)
    assert "-75% step time there (" in text and "checkpointing only adds work" in text
