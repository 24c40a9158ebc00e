"""Gradient equivalence of accumulation vs one large batch: the known picture, reproduced.

MLP and GroupNorm ConvNet accumulate exactly (float64: ~1e-16; float32: ~1e-7); BatchNorm does
not (tens of percent at micro-batch 4, BatchNorm named); a padded GPT with a per-micro-batch
mean loss divided by N does not (double-digit percent), and with token-count normalisation does.
"""

from __future__ import annotations

import collections
import json
from pathlib import Path

import pytest
import torch

from accumbench.equivalence import CheckConfig, EquivalenceResult, cast_floating, check_workload, split_batch
from accumbench.equivalence.diagnose import BATCHNORM_EVAL, DROPOUT_OFF, EVAL_MODE, TOKEN_NORM, batchnorm_layers
from accumbench.equivalence.gradients import compare_tensors
from accumbench.equivalence.precision import KeepFloat64, keep_float64
from accumbench.equivalence.record import equivalence_case_id, to_record
from accumbench.equivalence.table import format_diagnosis, format_notes, format_table
from accumbench.records import Record, RecordError
from accumbench.workloads import load_workload

PLUGIN = str(Path(__file__).parent / "workloads" / "bn_plugin.py")
FAST = CheckConfig(accum_steps=(2, 4))


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


_cache: dict = {}


def check(spec: str, config: CheckConfig = FAST, **options) -> list[EquivalenceResult]:
    key = (spec, config, tuple(sorted(options.items())))
    if key not in _cache:
        _cache[key] = check_workload(load_workload(spec, options), config)
    return _cache[key]


def by_norm(results, norm):
    return [r for r in results if r.loss_norm == norm]


# --- batches ----------------------------------------------------------------------------------

def test_split_batch_keeps_structure_and_concatenates_back():
    Pair = collections.namedtuple("Pair", "x y")
    batch = {"inputs": torch.arange(12.0).view(6, 2), "nested": (torch.arange(6), [torch.ones(6, 3)]),
             "pair": Pair(torch.zeros(6), torch.ones(6)), "scalar": torch.tensor(3.0), "note": "kept"}
    parts = split_batch(batch, 3)
    assert len(parts) == 3
    assert all(p["note"] == "kept" and p["scalar"] is batch["scalar"] for p in parts)
    assert all(isinstance(p["pair"], Pair) and isinstance(p["nested"][1], list) for p in parts)
    assert torch.equal(torch.cat([p["inputs"] for p in parts]), batch["inputs"])
    assert torch.equal(torch.cat([p["nested"][0] for p in parts]), batch["nested"][0])
    assert [p["inputs"].shape[0] for p in parts] == [2, 2, 2]


def test_split_batch_rejects_what_it_cannot_split():
    with pytest.raises(ValueError, match="does not split into 4"):
        split_batch((torch.zeros(6), torch.zeros(6)), 4)
    with pytest.raises(ValueError, match=r"batch\[1\] has 5 rows"):
        split_batch((torch.zeros(6), torch.zeros(5)), 2)
    with pytest.raises(ValueError, match="no tensor"):
        split_batch({"a": 1}, 2)


def test_cast_floating_leaves_integer_tensors_alone():
    cast = cast_floating((torch.zeros(2), torch.zeros(2, dtype=torch.long), "x"), torch.float64)
    assert cast[0].dtype == torch.float64 and cast[1].dtype == torch.long and cast[2] == "x"


def test_keep_float64_stops_float_from_downcasting_only_inside_the_workload():
    x = torch.ones(2, dtype=torch.float64)
    with KeepFloat64():
        assert x.float().dtype == torch.float64
        assert torch.ones(2, dtype=torch.float16).float().dtype == torch.float32
    assert x.float().dtype == torch.float32
    workload = keep_float64(load_workload("mlp"))
    logits = torch.randn(4, 10, dtype=torch.float64, requires_grad=True)
    loss = workload.loss(logits, (None, torch.zeros(4, dtype=torch.long)))
    assert loss.dtype == torch.float64


def test_compare_tensors_overall_and_worst():
    ref = {"a": torch.tensor([3.0, 4.0]), "b": torch.tensor([0.0, 0.0])}
    cmp = compare_tensors({"a": torch.tensor([3.0, 4.0]), "b": torch.tensor([0.0, 0.5])}, ref)
    assert cmp.rel_error == pytest.approx(0.1)
    assert cmp.worst(1) == [("b", float("inf"))]


# --- the known picture ------------------------------------------------------------------------

@pytest.mark.parametrize("spec", ["mlp", "convnet-gn"])
def test_plain_and_groupnorm_models_are_equivalent(spec):
    for r in check(spec):
        assert r.verdict == "equivalent", r
        assert r.rel_error < 1e-13  # float64: rounding only
        assert r.causes == () and r.explained
    for r in check(spec, CheckConfig(accum_steps=(4,), dtype="float32", optimizer_step=False, grad_scaler=False)):
        assert r.rel_error < 2e-6 and r.tolerance == 1e-5 and r.equivalent


def test_batchnorm_convnet_is_not_equivalent_and_batchnorm_is_named():
    results = check("convnet-bn")
    for r in results:
        assert r.verdict == "not-equivalent"
        assert r.rel_error > 0.05  # several percent at least (measured: 27-35%)
        assert [c.kind for c in r.causes] == ["batchnorm"]
        assert r.batchnorm_layers == ("features.0.1", "features.0.4", "features.1.1", "features.1.4")
        assert "features.0.1" in r.causes[0].summary and "GroupNorm" in r.causes[0].fix
        # With BatchNorm frozen (per-sample statistics) the difference is gone: it is the whole cause.
        assert r.counterfactuals[BATCHNORM_EVAL] < 1e-13 and r.explained
        assert r.running_stats_drift > 0.01
    assert any(name.startswith("features.") for name, _ in results[0].worst_parameters)


def test_padded_gpt_mean_loss_is_not_equivalent_token_norm_is():
    results = check("gpt", padded=True)
    assert {r.loss_norm for r in results} == {"mean", "token"}
    for r in by_norm(results, "mean"):
        assert r.rel_error > 0.10, r.rel_error  # double-digit percent
        assert [c.kind for c in r.causes] == ["token-mean"] and "--loss-norm token" in r.causes[0].fix
        assert len(set(r.loss_elements)) > 1
        assert r.counterfactuals[TOKEN_NORM] < 1e-13
    for r in by_norm(results, "token"):
        assert r.verdict == "equivalent" and r.rel_error < 1e-13 and r.causes == ()


def test_unpadded_gpt_has_equal_token_counts_and_both_norms_agree():
    results = check("gpt", CheckConfig(accum_steps=(2,), optimizer_step=False, grad_scaler=False))
    assert all(r.equivalent for r in results)
    assert len(set(results[0].loss_elements)) == 1


def test_multitask_workload_sums_its_losses_and_is_equivalent():
    results = check("shared-trunk", CheckConfig(accum_steps=(2,), optimizer_step=False, grad_scaler=False))
    assert len(results) == 1 and results[0].equivalent


def test_the_check_repeats_exactly():
    config = CheckConfig(accum_steps=(2,), optimizer_step=False, grad_scaler=False)
    first = check_workload(load_workload("convnet-bn"), config)[0]
    second = check_workload(load_workload("convnet-bn"), config)[0]
    assert first.rel_error == second.rel_error and first.worst_parameters == second.worst_parameters
    assert not torch.are_deterministic_algorithms_enabled()  # the setting is restored


# --- plug-ins: named layers, randomness, the unexplained ---------------------------------------

def test_plugin_batchnorm_layer_is_named_in_the_diagnosis():
    results = check(f"{PLUGIN}:bn_mlp")
    assert all(r.batchnorm_layers == ("stem_bn",) and not r.equivalent and r.explained for r in results)
    assert "stem_bn" in results[0].causes[0].summary
    assert "stem_bn" in format_diagnosis(results)
    model = load_workload(f"{PLUGIN}:bn_mlp").build_model()
    assert batchnorm_layers(model.eval()) == []  # frozen BatchNorm uses running statistics: no cause


def test_dropout_is_diagnosed_and_equivalent_with_dropout_off():
    for r in check(f"{PLUGIN}:dropout_mlp"):
        assert not r.equivalent and r.random_forward and r.dropout_layers == ("drop",)
        assert [c.kind for c in r.causes] == ["dropout"]
        assert r.counterfactuals[DROPOUT_OFF] < 1e-13 and r.explained


def test_functional_randomness_is_found_without_a_dropout_module():
    for r in check(f"{PLUGIN}:noisy_mlp"):
        assert not r.equivalent and r.random_forward and r.dropout_layers == ()
        assert [c.kind for c in r.causes] == ["random-forward"] and r.explained


def test_training_only_randomness_explains_nothing_that_eval_mode_still_shows():
    # Functional dropout over a layer that mixes samples: eval mode removes the randomness and
    # the difference stays, so the random forward is named but does not explain it.
    for r in check(f"{PLUGIN}:dropout_centering_mlp"):
        assert [c.kind for c in r.causes] == ["random-forward"] and r.counterfactuals[EVAL_MODE] > 0.1
        assert not r.explained
    # Noise drawn in eval mode too cannot be switched off: named, and taken as the reason.
    assert all(EVAL_MODE not in r.counterfactuals and r.explained for r in check(f"{PLUGIN}:noisy_mlp"))


def test_batchnorm_without_running_statistics_claims_no_eval_mode_evidence():
    for r in check(f"{PLUGIN}:bn_no_stats_mlp"):
        assert [c.kind for c in r.causes] == ["batchnorm"] and r.causes[0].counterfactual is None
        assert BATCHNORM_EVAL not in r.counterfactuals and r.explained
    assert "evidence" not in format_diagnosis(check(f"{PLUGIN}:bn_no_stats_mlp"))


def test_a_difference_no_diagnosis_knows_is_unexplained():
    for r in check(f"{PLUGIN}:centering_mlp"):
        assert not r.equivalent and r.causes == () and not r.explained
    assert "no known cause" in format_diagnosis(check(f"{PLUGIN}:centering_mlp"))


def test_dict_batches_are_split():
    assert all(r.equivalent for r in check(f"{PLUGIN}:dict_batch_mlp"))


# --- optimizer step and GradScaler ------------------------------------------------------------

def test_optimizer_step_matches_where_gradients_do_and_not_where_they_dont():
    for r in check("mlp"):
        assert set(r.optimizer_step) == {"sgd", "sgd-momentum", "adamw"}
        assert max(r.optimizer_step.values()) < 1e-12
    for r in check("convnet-bn"):
        # SGD's update is the gradient times lr: the same relative error.
        assert r.optimizer_step["sgd"] == pytest.approx(r.rel_error, rel=1e-6)
        assert r.optimizer_step["adamw"] > 0.05


def test_grad_scaler_exact_once_per_window_wrong_when_the_scale_changes_inside():
    for r in check("mlp"):
        assert r.grad_scaler["scale_once_per_window"] < 1e-15
        assert r.grad_scaler["scale_changed_inside_window"] > 0.1
    assert "once per optimizer step" in format_notes(check("mlp"))


def test_token_norm_without_counts_is_refused():
    with pytest.raises(ValueError, match="count"):
        check_workload(load_workload("mlp"), CheckConfig(loss_norm="token"))
    with pytest.raises(ValueError, match="loss_norm"):
        CheckConfig(loss_norm="median")


# --- records and tables -----------------------------------------------------------------------

def test_records_round_trip_and_carry_the_report_keys():
    result = by_norm(check("gpt", padded=True), "mean")[0]
    record = to_record(result, "run1", {"meter": "cpu", "device_name": "cpu"})
    again = Record.from_dict(json.loads(record.to_json()))  # validates: ok without a peak
    eq = again.equivalence
    assert again.scenario == "equivalence" and again.status == "ok" and again.peak_allocated is None
    assert (again.accum_steps, again.micro_batch, again.effective_batch) == (2, 4, 8)
    for key in ("rel_error", "verdict", "tolerance", "accum_steps", "dtype", "loss_norm", "worst_parameters",
                "causes", "optimizer_step", "running_stats_drift"):
        assert key in eq
    assert eq["verdict"] == "not-equivalent" and eq["dtype"] == "float64" and eq["loss_norm"] == "mean"
    assert isinstance(eq["worst_parameters"][0][0], str) and isinstance(eq["worst_parameters"][0][1], float)
    assert again.case_id == equivalence_case_id("gpt-tiny-padded", 4, 2, "mean", "float64")
    assert again.case_id.startswith("gpt-tiny-padded/equivalence/mb4/acc2/") and again.case_id.endswith("/float64")


def test_other_ok_records_still_need_a_peak():
    with pytest.raises(RecordError, match="peak_allocated"):
        Record.from_dict({"run_id": "r", "case_id": "c", "workload": "w", "scenario": "accumulated",
                          "micro_batch": 1, "accum_steps": 2, "effective_batch": 2, "amp": "none",
                          "set_to_none": True, "optimizer": "o", "schema": 1})


def test_table_rows_and_diagnosis_text():
    results = check("mlp") + check("convnet-bn")
    table = format_table(results).splitlines()
    assert table[0].split()[:5] == ["workload", "N", "loss", "norm", "rel"]
    assert len(table) == 2 + len(results)
    assert "NOT equivalent" in table[-1] and "BatchNorm" in table[-1]
    assert table[2].split()[:3] == ["mlp-tiny", "2", "mean"] and "equivalent" in table[2]
    diagnosis = format_diagnosis(results)
    assert diagnosis.startswith("convnet-bn-tiny: not equivalent") and "mlp-tiny" not in diagnosis
    assert "with BatchNorm in eval mode" in diagnosis and "running statistics" in diagnosis


def test_worst_tensors_leave_those_whose_gradient_is_zero_last():
    # An attention key's bias has a zero gradient (softmax ignores a shift): its relative error
    # is rounding noise, never "the worst parameter".
    reference = {"weight": torch.tensor([1.0, 2.0]), "key_bias": torch.tensor([1e-17, 0.0])}
    values = {"weight": torch.tensor([1.1, 2.0]), "key_bias": torch.tensor([3e-17, 0.0])}
    comparison = compare_tensors(values, reference)
    assert [name for name, _ in comparison.worst(2)] == ["weight", "key_bias"]
    assert comparison.per_tensor[1][1] == pytest.approx(2.0)  # still reported, in its place


def test_checkpointed_batchnorm_updates_its_statistics_twice_and_the_check_says_so():
    from accumbench.levers import Levers, with_levers

    workload = with_levers(load_workload("convnet-bn", {"size": "tiny"}), Levers(checkpoint="ConvStage"))
    model = workload.build_model()
    batch = workload.make_batch(4, torch.Generator().manual_seed(0))
    workload.loss(model(batch[0]), batch).backward()
    tracked = {int(m.num_batches_tracked) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert tracked == {2}  # one forward, one recomputation in the backward
    (result, *_) = check_workload(workload, CheckConfig(accum_steps=(2,), loss_norm="mean", optimizer_step=False,
                                                        grad_scaler=False))
    (cause,) = [c for c in result.causes if c.kind == "batchnorm"]
    assert "run their forward again in the backward and update the running statistics a second time" \
        in cause.explanation
    assert cause.fix.endswith("keep BatchNorm layers out of the checkpointed modules")
