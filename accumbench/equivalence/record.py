"""Equivalence results as result records (scenario "equivalence"), so `report` shows them and
`compare` can gate them next to the memory and speed records."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from accumbench.cases import Case, case_id
from accumbench.environment import provenance, utc_timestamp
from accumbench.equivalence.check import CheckConfig, EquivalenceResult
from accumbench.equivalence.optimizer_step import CHECK_OPTIMIZER_LABEL
from accumbench.records import Record

EQUIVALENCE_SCENARIO = "equivalence"


def check_provenance() -> dict[str, Any]:
    """Provenance fields for records of a check run on this machine's CPU."""
    from accumbench.meters.cpu import CpuMeter

    return {**provenance(), **CpuMeter().device_info(torch.device("cpu")), "meter": "cpu"}


def equivalence_case_id(workload: str, micro_batch: int, accum_steps: int, loss_norm: str, dtype: str) -> str:
    """Stable id of one check: the usual case id with scenario "equivalence", plus the dtype
    (a float32 and a float64 check are different measurements)."""
    case = Case(workload, EQUIVALENCE_SCENARIO, micro_batch, accum_steps, loss_norm=loss_norm)
    return f"{case_id(workload, case, CHECK_OPTIMIZER_LABEL)}/{dtype}"


def _identity(workload: str, options: Mapping[str, Any], micro_batch: int, accum_steps: int, loss_norm: str,
              dtype: str) -> dict[str, Any]:
    return {
        "case_id": equivalence_case_id(workload, micro_batch, accum_steps, loss_norm, dtype),
        "workload": workload,
        "scenario": EQUIVALENCE_SCENARIO,
        "micro_batch": micro_batch,
        "accum_steps": accum_steps,
        "effective_batch": micro_batch * accum_steps,
        "amp": "none",
        "set_to_none": True,
        "optimizer": CHECK_OPTIMIZER_LABEL,
        "loss_norm": loss_norm,
        "workload_options": dict(options),
    }


def to_record(result: EquivalenceResult, run_id: str, provenance_fields: Mapping[str, Any]) -> Record:
    """One ok record carrying the result in its `equivalence` block (no memory or speed: the
    check measures neither, so those fields stay None)."""
    return Record(
        run_id=run_id,
        **_identity(result.workload, result.workload_options, result.micro_batch, result.accum_steps,
                    result.loss_norm, result.dtype),
        status="ok",
        equivalence=result.to_dict(),
        timestamp=utc_timestamp(),
        **provenance_fields,
    )


def failure_records(workload: str, options: Mapping[str, Any], loss_norms: Sequence[str], config: CheckConfig,
                    error: str, run_id: str, provenance_fields: Mapping[str, Any]) -> list[Record]:
    """Error records for every configuration of a workload whose check raised."""
    return [
        Record(
            run_id=run_id,
            **_identity(workload, options, config.micro_batch, n, norm, config.dtype),
            status="error",
            error=error[:500],
            timestamp=utc_timestamp(),
            **provenance_fields,
        )
        for n in config.accum_steps for norm in loss_norms
    ]
