"""Suite expansion and case identity."""

from __future__ import annotations

import re

import pytest

from accumbench.cases import (
    MAX_ACCUM_STEPS,
    MAX_MICRO_BATCH,
    Case,
    SuiteError,
    case_id,
    expand_group,
    load_suite,
    override,
    parse_suite,
)

MLP = {"workload": "mlp", "scenarios": ["large-batch"], "micro_batch": [2]}


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
        # Every value's type and range, named with the group (or [defaults]) and the key: before,
        # these listed fine and then failed every case, or a string was taken as true.
        ({"group": [{**MLP, "steps": -1}]}, "suite: group 1: steps must be a positive integer, got -1"),
        ({"group": [{**MLP, "warmup": 0}]}, "suite: group 1: warmup must be a positive integer, got 0"),
        ({"group": [{**MLP, "steps": 10**12}]}, "suite: group 1: steps must be at most 1,000,000"),
        ({"group": [{**MLP, "amp": "fp8"}]}, "suite: group 1: amp must be one of none, bf16, fp16, got 'fp8'"),
        ({"group": [{**MLP, "loss_norm": 1}]}, "suite: group 1: loss_norm must be one of mean, token, got 1"),
        ({"group": [{**MLP, "set_to_none": "yes"}]}, "suite: group 1: set_to_none must be true or false, got 'yes'"),
        ({"group": [{**MLP, "compile": "yes"}]}, "suite: group 1: compile must be true or false, got 'yes'"),
        ({"group": [{**MLP, "checkpoint": 1}]}, "suite: group 1: checkpoint must be a string, got 1"),
        ({"defaults": {"warmup": "two"}, "group": [MLP]},
         r"suite: \[defaults\]: warmup must be a positive integer, got 'two'"),
        ({"defaults": 5, "group": [MLP]}, "suite: defaults must be a table"),
        ({"group": [{**MLP, "workload": 5}]}, "suite: group 1: workload must be a non-empty string, got 5"),
        ({"group": [{**MLP, "scenarios": ["nosuch"]}]}, "suite: group 1: unknown scenario 'nosuch'"),
        ({"group": [{**MLP, "scenarios": 5}]}, "suite: group 1: scenarios must be a scenario name or a list"),
        ({"group": [{**MLP, "options": "tiny"}]}, "suite: group 1: options must be a table"),
        ({"group": [{**MLP, "micro_batch": [MAX_MICRO_BATCH + 1]}]}, "suite: group 1: micro_batch must be at most"),
        ({"group": [{**MLP, "accum_steps": [MAX_ACCUM_STEPS + 1]}]}, "suite: group 1: accum_steps must be at most"),
        ({"group": [{**MLP, "max_effective_batch": "64"}]}, "suite: group 1: max_effective_batch must be a positive"),
        ({"group": [MLP, 5]}, "suite: group 2: must be a table"),
        ({"default": {"warmup": 1}, "group": [MLP]}, "suite: unknown top-level key"),
    ],
)
def test_bad_suites_say_what_is_wrong(data, message):
    with pytest.raises(SuiteError, match=message):
        parse_suite(data)


@pytest.mark.parametrize("knobs, message", [
    ({"warmup": 0}, "warmup must be a positive integer"),
    ({"steps": 0}, "steps must be a positive integer"),
    ({"amp": "fp8"}, "amp must be one of"),
    ({"set_to_none": "no"}, "set_to_none must be true or false"),
])
def test_a_case_refuses_a_bad_setting_however_it_is_made(knobs, message):
    # The suite checks name the file; Case's own check catches the other ways in (flags over a
    # suite, a plan's candidates, code), so the runner never meets a case every step must fail.
    with pytest.raises(SuiteError, match=message):
        Case("mlp", "large-batch", 2, **knobs)
    with pytest.raises(SuiteError, match=message):
        override([Case("mlp", "large-batch", 2)], **knobs)
    with pytest.raises(SuiteError, match="accum_steps must be at most"):
        Case("mlp", "accumulated", 2, MAX_ACCUM_STEPS + 1)


def test_suite_file_errors(tmp_path):
    with pytest.raises(SuiteError, match="neither a built-in"):
        load_suite(str(tmp_path / "nope.toml"))
    bad = tmp_path / "bad.toml"
    bad.write_text("[[group]\n")
    with pytest.raises(SuiteError, match="not valid TOML"):
        load_suite(str(bad))
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe[[group]]\n")
    with pytest.raises(SuiteError, match=re.escape(f"{binary}: not UTF-8 text")):
        load_suite(str(binary))
