"""Built-in workloads and the plug-in loader."""

from __future__ import annotations

import json

import pytest
import torch

from accumbench.cases import expand_group
from accumbench.workloads import BUILTIN_WORKLOADS, Workload, WorkloadError, load_workload, parse_option_value
from accumbench.workloads.gpt import IGNORE_INDEX


@pytest.mark.parametrize("name", sorted(BUILTIN_WORKLOADS))
def test_builtin_workloads_build_batch_and_loss(name):
    workload = load_workload(name)
    model = workload.build_model()
    batch = workload.make_batch(3, torch.Generator().manual_seed(0))
    loss = workload.loss(workload.forward(model, batch), batch)
    losses = loss if isinstance(loss, dict) else {"loss": loss}
    assert set(losses) == (set(workload.tasks) or {"loss"})
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())


def test_batches_are_deterministic_for_a_seed():
    workload = load_workload("gpt", {"padded": True})
    a = workload.make_batch(4, torch.Generator().manual_seed(3))
    b = workload.make_batch(4, torch.Generator().manual_seed(3))
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_padded_gpt_batches_vary_in_valid_tokens():
    workload = load_workload("gpt", {"padded": True, "size": "tiny"})
    _, labels = workload.make_batch(8, torch.Generator().manual_seed(0))
    per_sample = (labels != IGNORE_INDEX).sum(dim=1)
    assert per_sample.min() < per_sample.max() <= labels.shape[1]
    assert workload.count_loss_elements((None, labels)) == int(per_sample.sum())


def test_a_gpt_sequence_length_is_in_the_name_only_where_it_is_not_the_sizes_own():
    # seq_len=512 on gpt2 named another workload ('gpt-gpt2-s512'): plan --results and report
    # found no measured twin for it.
    assert load_workload("gpt", {"size": "gpt2", "seq_len": 512}).name == "gpt-gpt2"
    assert load_workload("gpt", {"size": "gpt2", "seq_len": 256}).name == "gpt-gpt2-s256"
    assert load_workload("gpt", {"size": "tiny", "seq_len": 64, "padded": True}).name == "gpt-tiny-s64-padded"
    # The multi-task workloads named every length alike: another length compared as the same case.
    assert load_workload("two-models", {"seq_len": 32}).name == "two-models-tiny"
    assert load_workload("shared-trunk", {"seq_len": 16}).name == "shared-trunk-tiny-s16"


def test_gpt2_size_is_about_124m_parameters():
    from accumbench.workloads.gpt import GPT_SIZES

    assert 120e6 < GPT_SIZES["gpt2"].approx_parameters < 130e6


def test_plugin_from_file(plugin_path):
    workload = load_workload(f"{plugin_path}:single")
    assert isinstance(workload, Workload) and workload.name == "plugin-mlp"


def test_plugin_from_module():
    workload = load_workload("accumbench.workloads.vision:mlp", {"size": "tiny"})
    assert workload.name == "mlp-tiny"


@pytest.mark.parametrize(
    "spec, message",
    [
        ("no-such-workload", "unknown workload 'no-such-workload'"),
        ("missing/file.py:build", "workload file not found: missing/file.py"),
        ("{plugin}:absent", "has no attribute 'absent'"),
        ("{plugin}:not_a_workload", "returned int, expected accumbench.Workload"),
        ("{plugin}:raises", "raised RuntimeError: boom in factory"),
        ("no_such_module_xyz:build", "cannot import module 'no_such_module_xyz'"),
    ],
)
def test_bad_workload_specs_give_one_clear_line(plugin_path, spec, message):
    with pytest.raises(WorkloadError, match=message) as info:
        load_workload(spec.format(plugin=plugin_path))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("spec, options, message", [
    ("gpt", {"padded": "maybe"}, "workload gpt: option padded takes true or false (also yes/no, on/off, 1/0), got 'maybe'"),
    ("gpt", {"padded": 2}, "option padded takes true or false"),
    ("gpt", {"seq_len": "abc"}, "workload gpt: option seq_len takes a whole number, got 'abc'"),
    ("gpt", {"seq_len": 0}, "workload gpt: option seq_len must be at least 1, got 0"),
    ("two-models", {"seq_len": 12.5}, "workload two-models: option seq_len takes a whole number, got 12.5"),
])
def test_bad_option_values_are_named(spec, options, message):
    # Before: 'maybe' was true (a non-empty string), int('abc') failed as "raised ValueError:
    # invalid literal for int()" without naming seq_len.
    with pytest.raises(WorkloadError) as info:
        load_workload(spec, options)
    assert message in str(info.value), info.value


def test_option_text_is_typed():
    assert load_workload("gpt", {"padded": "no", "seq_len": "16"}).options == {"size": "tiny", "seq_len": 16,
                                                                              "padded": False}
    assert load_workload("gpt", {"padded": 1}).name == "gpt-tiny-padded"
    assert parse_option_value("nan") == "nan" and parse_option_value("1e3") == 1000.0  # only finite numbers


def test_a_list_or_table_option_is_parsed_as_json_and_keeps_cases_hashable():
    # Config attributes that hold one value per stage (hf:swin depths=[2,2,6,2]) or a table.
    assert parse_option_value("[2, 2,6,2]") == [2, 2, 6, 2]
    assert parse_option_value('{"rope_type": "linear", "factor": 2.0}') == {"rope_type": "linear", "factor": 2.0}
    assert parse_option_value("[oops") == "[oops"  # not JSON: text, for the factory to refuse by name
    cases = expand_group("hf:swin", ["large-batch"], [1, 2], options={"depths": [1, 1], "rope": {"a": [1]}})
    assert len(set(cases)) == 2 and cases[0].options_dict["depths"] == [1, 1]
    assert json.loads(json.dumps(cases[0].options_dict)) == {"depths": [1, 1], "rope": {"a": [1]}}


def test_unknown_option_for_builtin():
    with pytest.raises(WorkloadError, match="does not take options"):
        load_workload("mlp", {"colour": "red"})
    with pytest.raises(WorkloadError, match="unknown mlp size"):
        load_workload("mlp", {"size": "huge"})
