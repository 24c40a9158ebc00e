"""Suite expansion and case identity."""

from __future__ import annotations

import pytest

from accumbench.cases import Case, SuiteError, case_id, expand_group, load_suite, parse_suite


def test_grid_expansion_rules():
    cases = expand_group("mlp", ["large-batch", "accumulated", "multitask-combined"], [4, 8], [1, 2])
    large = sorted(c.micro_batch for c in cases if c.scenario == "large-batch")
    assert large == [4, 8, 16]  # each distinct effective batch, accum 1 (8 = 4x2 = 8x1 once)
    accumulated = sorted((c.micro_batch, c.accum_steps) for c in cases if c.scenario == "accumulated")
    assert accumulated == [(4, 2), (8, 2)]  # accum 1 *is* the large batch
    assert len([c for c in cases if c.scenario == "multitask-combined"]) == 4


def test_effective_batch_and_cap():
    cases = expand_group("gpt", ["accumulated"], [1, 3, 4, 8], effective_batches=[16], max_effective_batch=16)
    assert sorted((c.micro_batch, c.accum_steps) for c in cases) == [(1, 16), (4, 4), (8, 2)]


def test_case_id_is_stable_and_names_every_knob():
    case = Case("gpt", "accumulated", 8, 4, amp="bf16", set_to_none=False, loss_norm="token", steps=9)
    ident = case_id("gpt-tiny", case, "AdamW(foreach)")
    assert ident == "gpt-tiny/accumulated/mb8/acc4/amp-bf16/zero_grad/norm-token/AdamW(foreach)"
    # Step counts change how well, not what, is measured: same id.
    assert ident == case_id("gpt-tiny", Case("gpt", "accumulated", 8, 4, amp="bf16", set_to_none=False,
                                             loss_norm="token", steps=2), "AdamW(foreach)")
    assert case_id("gpt-tiny", case, "AdamW(foreach)", world_size=2).endswith("/ws2")


def test_builtin_suites_expand():
    smoke, default = load_suite("smoke"), load_suite("default")
    assert {c.scenario for c in smoke} == {"large-batch", "accumulated", "multitask-combined",
                                           "multitask-sequential"}
    gpt = [c for c in default if c.workload == "gpt" and dict(c.options)["size"] == "gpt2"]
    assert max(c.effective_batch for c in gpt) == 256
    assert all(c.amp == "bf16" for c in gpt)


@pytest.mark.parametrize(
    "data, message",
    [
        ({}, "at least one"),
        ({"group": [{"scenarios": ["large-batch"], "micro_batch": [1]}]}, "missing key 'workload'"),
        ({"group": [{"workload": "mlp", "scenarios": ["large-batch"], "micro_batch": "big"}]}, "micro_batch must be"),
        ({"group": [{"workload": "mlp", "scenarios": ["large-batch"], "micro_batch": [0]}]}, "positive"),
        ({"group": [{"workload": "mlp", "scenarios": ["large-batch"], "micro_batch": [1], "colour": 1}]},
         "unknown case setting"),
    ],
)
def test_bad_suites_say_what_is_wrong(data, message):
    with pytest.raises(SuiteError, match=message):
        parse_suite(data)


def test_suite_file_errors(tmp_path):
    with pytest.raises(SuiteError, match="neither a built-in"):
        load_suite(str(tmp_path / "nope.toml"))
    bad = tmp_path / "bad.toml"
    bad.write_text("[[group]\n")
    with pytest.raises(SuiteError, match="not valid TOML"):
        load_suite(str(bad))
