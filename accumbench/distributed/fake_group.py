"""Predicting rank 0's peak under FSDP for W GPUs, in one CPU process, with no GPU and no peers.

How: a process group on torch's fake backend (`FakeStore` + backend "fake": every collective
returns at once and moves no data) stands for W ranks, with this process as rank 0. The device
mesh is built over it before any fake tensor exists; the model is built on the meta device,
sharded by `fully_shard` exactly as a real rank shards it, then materialised under the estimate
meter's fake-tensor mode (`to_empty`): rank 0's shards, padded as FSDP pads them, with no data.
The same scenario step then runs on rank 0's slice of each global micro-batch, under the
estimate meter's logging tracker (FSDP2's storage resizes observed), so the prediction counts
what `accumbench run --parallel fsdp` measures on rank 0; with `--device-kind cpu` the two agree
to the byte.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Sequence

import torch
import torch.distributed as dist

from accumbench.distributed.collectives import CollectiveCounter
from accumbench.distributed.fsdp import FsdpCase, mesh_of, observe_storage_resizes, shard_model
from accumbench.distributed.fsdp_runner import collective_fields, fsdp_block
from accumbench.distributed.runner import rank_batches
from accumbench.environment import provenance, utc_timestamp
from accumbench.estimate_assumptions import DeviceAssumptions
from accumbench.meters.estimate import EstimateMeter
from accumbench.records import Record
from accumbench.runner import DEFAULT_SEED, PreparedCase, identity_fields, optimizer_label, speed_fields

# What an FSDP estimate's predicted speed leaves out (a record's note, and plan's line).
COMMUNICATION_NOT_MODELLED = ("step time without communication: the all-gathers and reduce-scatters are "
                              "priced as memory traffic on one GPU, with no interconnect time; the job's "
                              "samples/s is rank 0's times the world size, an upper bound")
from accumbench.scenarios import StepOptions, check_compatible, new_training_state
from accumbench.levers import ESTIMATE_REFUSES_COMPILE, LeverError, Levers, with_levers
from accumbench.workloads import load_workload
from accumbench.workloads.base import seed_host_generators


@contextlib.contextmanager
def fake_process_group(world_size: int) -> Iterator[dist.ProcessGroup]:
    """The default process group on the fake backend: W ranks, this process rank 0. Raises
    RuntimeError when a process group already exists (a real job must not be replaced)."""
    from torch.testing._internal.distributed.fake_pg import FakeStore

    if dist.is_initialized():
        raise RuntimeError("a process group already exists; the FSDP estimate needs its own fake one")
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world_size)
    try:
        yield dist.group.WORLD
    finally:
        dist.destroy_process_group()


class FsdpEstimator:
    """Estimates `FsdpCase`s for rank 0 of `world_size` ranks; use inside `fake_process_group`."""

    def __init__(self, assumptions: DeviceAssumptions, world_size: int, group: dist.ProcessGroup,
                 seed: int = DEFAULT_SEED, run_id: str | None = None) -> None:
        import uuid

        self.assumptions = assumptions
        self.world_size = world_size
        self.seed = seed
        self.run_id = run_id or uuid.uuid4().hex[:12]
        self.mesh = mesh_of(group, "cpu")  # before any fake tensor: the mesh holds real ones
        self.meter = EstimateMeter(assumptions)
        self.device = torch.device("cpu")
        self._provenance = {**provenance(), **self.meter.device_info(self.device), "meter": self.meter.name}

    def prepare(self, fcase: FsdpCase, workload, counter: CollectiveCounter) -> PreparedCase:
        """Rank 0's sharded model of fake tensors, its optimizer and its micro-batch slices.
        Call inside the meter's `case_context()`."""
        case = fcase.case
        check_compatible(case.scenario, workload, case.loss_norm)
        seed_host_generators(self.seed)
        with torch.device("meta"):
            model = workload.build_model()
        shard_model(model, self.mesh, case.amp, fcase.reshard_after_forward, fcase.wrap)
        with self.meter._mode:
            model.to_empty(device=self.device)
        counter.install(model)
        options = StepOptions(amp=case.amp, set_to_none=case.set_to_none, loss_norm=case.loss_norm)
        state = new_training_state(workload, model, self.device, options)
        state.skip_sync_until_last = fcase.no_sync
        shards, weights = rank_batches(workload, case, 0, self.world_size, self.seed)
        return PreparedCase(case.scenario, workload, state, shards, weights)

    def estimate(self, fcase: FsdpCase) -> Record:
        """One case's prediction as a record (an `error` record if it cannot be estimated)."""
        case = fcase.case
        workload = with_levers(load_workload(case.workload, case.options_dict), Levers.of(case))
        counter = CollectiveCounter("cpu")
        try:
            if case.compile:
                raise LeverError(ESTIMATE_REFUSES_COMPILE)
            with self.meter.case_context(), observe_storage_resizes():
                prepared = self.prepare(fcase, workload, counter)
                counter.reset()
                measurement = self.meter.measure(prepared.step, prepared.state, prepared.batches, 1, 1)
                optimizer = optimizer_label(prepared.state.optimizer)
                parameters = sum(p.numel() for p in prepared.state.model.parameters())
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # a case that cannot be estimated is data
            return self._failed(fcase, workload, exc)
        finally:
            self.meter.release(self.device)
        # Two steps were profiled (warm-up and steady): the counts of one are half of the window.
        collectives = collective_fields([counter.stats(2)])
        for key in ("allgather_time_s_per_step", "reducescatter_time_s_per_step", "collective_timing",
                    "per_rank_allgather_time_s_per_step", "per_rank_reducescatter_time_s_per_step"):
            collectives.pop(key)  # the fake backend moves nothing: no times to predict
        fields = identity_fields(case, workload, optimizer)
        fields["case_id"] = fcase.case_id(workload.name, optimizer, self.world_size)
        fields["effective_batch"] = case.effective_batch * self.world_size
        # Merged, not passed side by side: the speed fields restate `measured_steps`.
        speed = speed_fields(measurement, case, workload, measurement.flops_per_step, self._provenance["device_name"])
        for key in ("samples_per_s", "tokens_per_s"):
            if speed.get(key):  # every rank steps as rank 0: the job's rate, as a run's records sum the ranks'
                speed[key] *= self.world_size
        fields.update(speed)
        assumptions = {**(measurement.assumptions or {}), "predicted_rank": 0}
        if measurement.predicted_step_time_s:
            # The fake group moves nothing: its collectives are priced as one GPU's memory
            # traffic, and no interconnect time is added. Said, so no one reads it as a job's.
            assumptions["applied"] = [*assumptions.get("applied", []), COMMUNICATION_NOT_MODELLED]
        return Record(
            run_id=self.run_id, **self._provenance, **fields, world_size=self.world_size,
            status="ok", peak_allocated=measurement.peak_allocated,
            first_step_peak_allocated=measurement.first_step_peak_allocated,
            baseline_allocated=measurement.baseline_allocated, breakdown=measurement.breakdown,
            assumptions=assumptions,
            parameters=parameters, timestamp=utc_timestamp(),
            distributed={"backend": "fake", **fsdp_block(fcase), "per_rank_effective_batch": case.effective_batch,
                         **collectives},
        )

    def _failed(self, fcase: FsdpCase, workload, exc: BaseException) -> Record:
        from accumbench.runner import default_optimizer_label

        optimizer = default_optimizer_label(workload)
        fields = identity_fields(fcase.case, workload, optimizer)
        fields["case_id"] = fcase.case_id(workload.name, optimizer, self.world_size)
        fields["effective_batch"] = fcase.case.effective_batch * self.world_size
        text = str(exc).splitlines()[0] if str(exc) else ""
        return Record(run_id=self.run_id, **self._provenance, **fields, world_size=self.world_size,
                      status="error", error=f"{type(exc).__name__}: {text}"[:400], timestamp=utc_timestamp(),
                      distributed={"backend": "fake", **fsdp_block(fcase)})


def estimate_fsdp(fcases: Sequence[FsdpCase], assumptions: DeviceAssumptions, world_size: int,
                  seed: int = DEFAULT_SEED, on_record: Callable[[Record], None] | None = None) -> list[Record]:
    """Predict rank 0's peak of every case for `world_size` ranks, in this process, on a fake
    process group that exists only for the call."""
    records: list[Record] = []
    with fake_process_group(world_size) as group:
        estimator = FsdpEstimator(assumptions, world_size, group, seed)
        for fcase in fcases:
            record = estimator.estimate(fcase)
            records.append(record)
            if on_record:
                on_record(record)
    return records


__all__ = ["FsdpEstimator", "estimate_fsdp", "fake_process_group"]
