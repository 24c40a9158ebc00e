"""The runner: OOM and errors are data, records reach the sink one by one, resume skips."""

from __future__ import annotations

import pytest
import torch

from accumbench.cases import Case, expand_group
from accumbench.runner import Runner, is_out_of_memory

CPU = torch.device("cpu")


@pytest.mark.slow  # a few seconds on 2 cores: .ci/run's slow step runs it
def test_oom_is_recorded_and_the_run_goes_on(plugin_path):
    cases = expand_group(f"{plugin_path}:oom_above_8", ["large-batch", "accumulated"], [4, 16], [1, 2],
                         knobs={"warmup": 1, "steps": 2})
    seen = []
    records = Runner(CPU).run(cases, sink=seen.append)
    assert seen == records and len(records) == len(cases)
    by_batch = {(r.scenario, r.micro_batch, r.accum_steps): r for r in records}
    assert by_batch[("large-batch", 16, 1)].status == "oom"
    assert "out of memory" in by_batch[("large-batch", 16, 1)].error
    assert by_batch[("large-batch", 8, 1)].status == "ok"
    assert by_batch[("accumulated", 4, 2)].status == "ok"  # 4x2 fits where 8x... runs
    assert by_batch[("accumulated", 16, 2)].status == "oom"
    assert by_batch[("large-batch", 16, 1)].peak_allocated is None


def test_an_error_in_a_case_is_recorded_with_its_message():
    # A knob the scenario rejects fails inside the case, not the run.
    record = Runner(CPU).measure(Case("mlp", "large-batch", 4, 1, (("size", "tiny"),), loss_norm="token"))
    assert record.status == "error"
    assert "loss_norm='token' needs a workload that counts loss elements" in record.error


def test_resume_skips_finished_case_ids():
    runner = Runner(CPU)
    cases = expand_group("mlp", ["large-batch"], [2, 4], options={"size": "tiny"}, knobs={"warmup": 1, "steps": 1})
    first = runner.run(cases[:1])
    rest = runner.run(cases, skip={r.case_id for r in first})
    assert [r.micro_batch for r in rest] == [4]


def test_keyboard_interrupt_keeps_what_was_measured(plugin_path, monkeypatch):
    runner = Runner(CPU)
    cases = expand_group("mlp", ["large-batch"], [2, 4, 8], options={"size": "tiny"}, knobs={"warmup": 1, "steps": 1})
    kept = []
    original = runner.measure

    def measure(case):
        if case.micro_batch == 8:
            raise KeyboardInterrupt
        return original(case)

    monkeypatch.setattr(runner, "measure", measure)
    with pytest.raises(KeyboardInterrupt):
        runner.run(cases, sink=kept.append)
    assert [r.micro_batch for r in kept] == [2, 4]


def test_record_fields_follow_the_contract():
    record = Runner(CPU).measure(Case("gpt", "accumulated", 2, 3, (("size", "tiny"),), warmup=1, steps=3))
    assert record.status == "ok"
    assert (record.micro_batch, record.accum_steps, record.effective_batch) == (2, 3, 6)
    assert record.optimizer == "AdamW(foreach)"
    assert record.meter == "cpu" and record.device_name.startswith("cpu")
    assert len(record.step_times_s) == 3
    assert record.tokens_per_s == pytest.approx(record.samples_per_s * 32)
    assert record.flops_per_step > 0
    assert record.torch_version == torch.__version__
    assert record.workload_options == {"size": "tiny", "seq_len": 32, "padded": False}


def test_multitask_records_name_tasks_layout_and_retain_graph():
    runner = Runner(CPU)
    shared = runner.measure(Case("shared-trunk", "multitask-sequential", 2, 1, (("size", "tiny"),), warmup=1, steps=1))
    separate = runner.measure(Case("two-models", "multitask-sequential", 2, 1, (("size", "tiny"),), warmup=1, steps=1))
    assert shared.retain_graph and not separate.retain_graph
    assert shared.tasks == ("lm", "cls") and shared.layout == "shared-trunk"


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_paths_run_on_cpu(amp):
    record = Runner(CPU).measure(Case("gpt", "accumulated", 2, 2, (("size", "tiny"),), amp=amp, warmup=1, steps=1))
    assert record.status == "ok", record.error
    assert record.amp == amp


def test_out_of_memory_detection():
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))


def test_a_case_whose_step_count_is_invalid_still_gives_an_error_record():
    # Case refuses steps < 1; code can still set it around that check. The error record's
    # path asks for the step policy again: it must not raise a second, chained exception.
    case = Case("mlp", "large-batch", 2, 1, (("size", "tiny"),), warmup=1, steps=1)
    object.__setattr__(case, "steps", -1)
    record = Runner(CPU).measure(case)
    assert record.status == "error" and "steps must be at least 1" in record.error, record.error
