"""The result record: round trip, validation, clear errors for corrupt and foreign files."""

from __future__ import annotations

import json

import pytest

from accumbench.records import (
    SCHEMA_VERSION,
    Record,
    RecordError,
    append_record,
    load_results,
    read_records,
)


def make_record(**changes) -> Record:
    fields = dict(run_id="r1", case_id="mlp/large-batch/mb8", workload="mlp", scenario="large-batch",
                  micro_batch=8, accum_steps=1, effective_batch=8, amp="none", set_to_none=True,
                  optimizer="AdamW(foreach)", peak_allocated=1000, step_times_s=(0.1, 0.3, 0.2))
    fields.update(changes)
    return Record(**fields)


def test_round_trip_through_jsonl(tmp_path):
    path = tmp_path / "r.jsonl"
    records = [make_record(), make_record(case_id="x", status="oom", peak_allocated=None, error="OOM")]
    for record in records:
        append_record(path, record)
    assert read_records(path) == records
    assert json.loads(path.read_text().splitlines()[0])["schema"] == SCHEMA_VERSION


def test_load_results_gives_one_row_per_record_with_derived_median(tmp_path):
    path = tmp_path / "r.jsonl"
    append_record(path, make_record())
    frame = load_results([path])
    assert list(frame["case_id"]) == ["mlp/large-batch/mb8"]
    assert frame["median_step_time_s"][0] == pytest.approx(0.2)
    assert frame["source"][0] == str(path)


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", "r.jsonl:2: not valid JSON"),
        ("[1, 2]", "r.jsonl:2: expected a JSON object"),
        ('{"hello": 1}', "r.jsonl:2: no integer 'schema' field"),
        ('{"schema": 99}', "r.jsonl:2: schema 99 is newer"),
        ('{"schema": 1, "run_id": "x"}', "r.jsonl:2: missing field(s): case_id"),
    ],
)
def test_bad_lines_name_the_file_and_line(tmp_path, line, message):
    path = tmp_path / "r.jsonl"
    append_record(path, make_record())
    with open(path, "a") as fh:
        fh.write(line + "\n")
    with pytest.raises(RecordError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_records(path)


def test_invalid_values_are_rejected():
    with pytest.raises(RecordError, match="status"):
        make_record(status="fine").validate()
    with pytest.raises(RecordError, match="micro_batch"):
        make_record(micro_batch=0).validate()
    with pytest.raises(RecordError, match="peak_allocated"):
        make_record(peak_allocated=None).validate()


def test_an_effective_batch_other_than_its_configuration_is_rejected_with_the_line(tmp_path):
    good = make_record()
    assert good.effective_batch == good.micro_batch * good.accum_steps * good.world_size
    path = tmp_path / "edited.jsonl"
    append_record(path, good)
    data = json.loads(good.to_json())
    data["accum_steps"] += 1  # edited by hand: the effective batch no longer follows
    path.write_text(path.read_text() + json.dumps(data) + "\n")
    with pytest.raises(RecordError, match=r"edited.jsonl:2: effective_batch \d+ is not micro_batch x accum_steps"):
        read_records(path)
    with pytest.raises(RecordError, match="world_size"):
        make_record(world_size=2).validate()  # under DDP every rank adds its micro-batches


def test_missing_file_and_directory_are_clear(tmp_path):
    with pytest.raises(RecordError, match="no such file"):
        read_records(tmp_path / "absent.jsonl")
    with pytest.raises(RecordError, match="is a directory"):
        read_records(tmp_path)
