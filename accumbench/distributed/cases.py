"""Which cases run under DDP, and the ids their records carry."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Iterable

from accumbench.cases import Case, case_id


@dataclass(frozen=True)
class DistributedCase:
    """A case run on several ranks: `no_sync` skips the gradient synchronisation on the
    non-final micro-steps. `DdpCase` and `accumbench.distributed.fsdp.FsdpCase` say how."""

    case: Case
    no_sync: bool = False
    parallel: ClassVar[str] = ""  # "ddp" or "fsdp": names the case in labels and ids

    @property
    def scenario(self) -> str:
        """The wrapped case's scenario (large-batch or accumulated)."""
        return self.case.scenario

    @property
    def workload(self) -> str:
        """The wrapped case's workload spec."""
        return self.case.workload

    def label(self) -> str:
        """A short human description for progress lines."""
        return f"{self.case.label()} {self.parallel}{'-nosync' if self.no_sync else ''}"

    def case_id(self, workload_name: str, optimizer: str, world_size: int) -> str:
        """The id this case's record carries."""
        raise NotImplementedError


@dataclass(frozen=True)
class DdpCase(DistributedCase):
    """A case run under DDP; `no_sync` puts the non-final micro-steps under `model.no_sync()`."""

    parallel: ClassVar[str] = "ddp"

    def case_id(self, workload_name: str, optimizer: str, world_size: int) -> str:
        """The id this case's record carries (`ddp_case_id`)."""
        return ddp_case_id(workload_name, self, optimizer, world_size)


def ddp_cases(cases: Iterable[Case]) -> tuple[list[DdpCase], list[Case]]:
    """The DDP variants of the cases, and the cases DDP does not run (multi-task).

    `accumulated` runs twice, with and without `no_sync()` (the knob this measures);
    `large-batch` once (one backward: one all-reduce of each bucket either way).
    """
    kept: list[DdpCase] = []
    skipped: list[Case] = []
    for case in cases:
        if case.scenario == "accumulated":
            kept += [DdpCase(case, no_sync=True), DdpCase(case, no_sync=False)]
        elif case.scenario == "large-batch":
            kept.append(DdpCase(case, no_sync=False))
        else:
            skipped.append(case)
    return kept, skipped


def ddp_case_id(workload_name: str, dcase: DdpCase, optimizer: str, world_size: int) -> str:
    """`case_id` of the wrapped case (with `/wsN` when N > 1) plus `/ddp-nosync` or `/ddp-sync`."""
    base = case_id(workload_name, dcase.case, optimizer, world_size=world_size)
    return f"{base}/ddp-{'nosync' if dcase.no_sync else 'sync'}"
