"""Values beside fake tensors: what lets the estimate run data-dependent ops.

Fake tensors have sizes but no values, so an op whose result depends on values fails on them:
`.item()` (`aten._local_scalar_dense`), `nonzero`, `torch.where(mask)`, `masked_select`,
`unique`, a loop over the experts a router hit. A careful estimator resolves each one in one of
three ways, and `KnownValues` (a dispatch mode under the tracker, over the fake-tensor mode) does
all three:

- **The value-producing part runs for real on small real tensors.** Every tensor whose value
  does not depend on the model's weights (the batch, `arange`/`zeros` constants, masks and
  position ids made from them, routing indices, counts, offsets) keeps a real copy beside its
  fake one (up to 64 MiB; floating ones only up to 1 MiB while the model is built): an op whose
  inputs all have one runs for real on them too.
  A data-dependent op then runs for real, and its fake result gets the real result's sizes,
  strides and storage bytes. While the model is built, its own values are kept as well (weight
  initialisation may read them: `torch.nn.init.trunc_normal_` loops until no sample is out of
  range, the `_local_scalar_dense` a ViT failed on); `forget` drops the parameters' values
  afterwards, so a step never depends on random weights the cpu meter does not share.
- **Values no one can know come from a named assumption.** Which experts a router picks depends
  on the weights: the indices of a `topk` (or `argmax`) over values the estimate does not hold
  are set by `moe_routing` (`balanced`: token t's j-th choice is expert (t*k + j) mod E, so
  every expert gets the same number of tokens; `worst`: every token picks experts 0..k-1, so k
  experts get every token). `assumption_read` tells whether such values ever decided a size;
  only then does the peak depend on the assumption.
- **Where only some inputs decide the sizes, only those need values.** `h[mask]` keeps as many
  rows of the activation `h` as the mask has true elements, `masked_select(h, mask)` as many
  elements, `ctc_loss` makes its `log_alpha` as long as the longest target: the values of the
  activations never decide a size. `SIZE_INPUTS` names, per op, the inputs whose values decide
  its output sizes (or that the kernel reads as indices and lengths); when those are known the
  op is resolved though the others are not: boolean masks of `index` become the integer indices
  the real kernel makes of them (`mask.nonzero()`, which fake tensors take as they are), a
  `masked_select` result gets the mask's count, and the `ctc_loss` kernels run for real on
  zeros of the activations' sizes. Its outputs get the real sizes and no values.

Values that came from the micro-batch are marked (a real tensor that enters the fake step: the
scenario copies each host tensor of the batch to the device, `TrainingState.to_device`, and
everything computed from one): `batch_decided` names the first op whose output sizes, or a
value read on the host, depended on them. Such a step can change its sizes from one micro-batch
to the next even when every micro-batch has the same shapes, which `accumbench.estimate` must
know before it repeats or rescales a profiled micro-step.

Anything else ends the case with `UnmodelledOp`: one line that names the op.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any, Iterator

import torch
from torch._subclasses.fake_tensor import (
    DataDependentOutputException,
    DynamicOutputShapeException,
    FakeTensor,
    UnsupportedOperatorException,
    unset_fake_temporarily,
)
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map
from torch.utils.weak import WeakIdKeyDictionary

from accumbench.estimate_assumptions import MOE_ROUTINGS
from accumbench.meters.fake_kernels import FAKE_KERNELS, UnmodelledOp, bound_arguments, op_name
from accumbench.steptime import written_arguments

aten = torch.ops.aten
# Largest tensors whose values are kept: 64 MiB (indices, masks, one-hot routing, float masks
# made from the batch: Longformer's (batch, 1, seq, seq) float mask decides an `.item()`), but
# floating ones only up to 1 MiB while the model is built, so that building a large model
# never materialises its weights.
DEFAULT_MAX_BYTES = 64 << 20
DEFAULT_MAX_FLOAT_BYTES = 1 << 20
# Ops whose indices output routes tokens: (op, index of the indices output).
ROUTING_OPS = {aten.topk.default: 1, aten.argmax.default: 0}
# Ops whose output sizes depend on the values of these inputs only (the others lend their
# sizes, strides and dtypes): an index's masks, masked_select's mask, the targets and lengths
# ctc_loss reads (it sizes log_alpha by the longest target, and indexes with the others).
SIZE_INPUTS: dict[Any, tuple[str, ...]] = {
    aten.index.Tensor: ("indices",),
    aten.masked_select.default: ("mask",),
    aten._ctc_loss.default: ("targets",),
    aten._ctc_loss.Tensor: ("targets", "input_lengths", "target_lengths"),
    aten._ctc_loss_backward.default: ("targets",),
    aten._ctc_loss_backward.Tensor: ("targets", "input_lengths", "target_lengths"),
}
# Data-dependent ops the estimate cannot follow even where the sizes come from the batch, and why
# (said instead of blaming weights or activations).
NOT_MODELLED = {
    aten._pack_padded_sequence.default:
        "packed sequences are not modelled: the packed RNN kernels read batch_sizes' values in C++, "
        "which fake tensors do not hold; pad the batch and run the RNN on it, or measure with run",
}
# Ops that make a constant of a real tensor (`torch.tensor(0.0)`): not a value from the batch.
LIFT_OPS = frozenset({aten.lift_fresh.default, aten.lift_fresh_copy.default})


def routing_indices(shape: tuple[int, ...], dim: int, choices: int, k: int, routing: str) -> torch.Tensor:
    """The assumed indices of a top-k over `choices` experts (see the module docstring)."""
    dim = dim % len(shape) if shape else 0
    moved = [*shape[:dim], *shape[dim + 1:], k]
    tokens = 1
    for size in moved[:-1]:
        tokens *= size
    j = torch.arange(k)
    if routing == "worst":
        flat = j.expand(tokens, k)
    else:
        flat = (torch.arange(tokens)[:, None] * k + j) % choices
    return flat.reshape(moved).movedim(-1, dim)


@contextlib.contextmanager
def known_tensors_look_real(values: "KnownValues") -> Iterator[None]:
    """Libraries that take another branch for fake tensors (transformers' `is_tracing`: "a fake
    tensor means torch.compile is tracing, do not read values") see a fake tensor whose value the
    estimate holds as a real one, so the estimate runs the branch the real step runs (e.g. SDPA's
    `is_causal` instead of a materialised mask). Fake tensors of unknown value stay fake.

    Then transformers' `warn_if_padding_and_no_attention_mask` runs as in the real step, and
    reads the batch (is the pad token among the first and last ids?) only to log a warning: what
    it reads decides no size (`KnownValues.deciding_nothing`).

    A 0-dim tensor of known value also formats as its value, as a real one does (`Tensor.__format__`
    reads `.item()` for a plain tensor only): Switch Transformers names the expert to run by
    `f"expert_{index}"`."""
    def __format__(tensor, spec):
        if tensor.dim() == 0 and values.value_of(tensor) is not None:
            return tensor.item().__format__(spec)
        return torch.Tensor.__format__(tensor, spec)

    previous = FakeTensor.__dict__.get("__format__")  # entered again inside itself: put back what was
    FakeTensor.__format__ = __format__
    try:
        with _transformers_sees_known_tensors_as_real(values):
            yield
    finally:
        if previous is None:
            del FakeTensor.__format__
        else:
            FakeTensor.__format__ = previous


@contextlib.contextmanager
def _transformers_sees_known_tensors_as_real(values: "KnownValues") -> Iterator[None]:
    module = sys.modules.get("transformers.utils.import_utils")
    original = getattr(module, "is_fake_tensor", None)
    if original is None:
        yield
        return

    def is_fake_tensor(x) -> bool:
        return original(x) and values.value_of(x) is None

    model_class = getattr(sys.modules.get("transformers.modeling_utils"), "PreTrainedModel", None)
    warn = getattr(model_class, "warn_if_padding_and_no_attention_mask", None)

    def warn_if_padding_and_no_attention_mask(model, *args, **kwargs):
        with values.deciding_nothing():
            return warn(model, *args, **kwargs)

    module.is_fake_tensor = is_fake_tensor
    if warn is not None:
        model_class.warn_if_padding_and_no_attention_mask = warn_if_padding_and_no_attention_mask
    try:
        yield
    finally:
        module.is_fake_tensor = original
        if warn is not None:
            model_class.warn_if_padding_and_no_attention_mask = warn


def _fake_like(value: Any) -> Any:
    """A fake tensor with the sizes, strides and storage bytes of a real one (made while the
    fake mode is current); anything else as it is."""
    if not isinstance(value, torch.Tensor):
        return value
    itemsize = value.element_size()
    storage = torch.empty(-(-value.untyped_storage().nbytes() // itemsize), dtype=value.dtype)
    return storage.as_strided(value.shape, value.stride(), value.storage_offset())


class KnownValues(TorchDispatchMode):
    """Keeps real values beside fake tensors and resolves data-dependent ops with them (see the
    module docstring). Enter it after the fake-tensor mode and before the tracker."""

    def __init__(self, moe_routing: str = "balanced", max_bytes: int = DEFAULT_MAX_BYTES,
                 max_float_bytes: int = DEFAULT_MAX_FLOAT_BYTES) -> None:
        super().__init__()
        if moe_routing not in MOE_ROUTINGS:
            raise ValueError(f"moe_routing must be one of {', '.join(MOE_ROUTINGS)}, got {moe_routing!r}")
        self.moe_routing = moe_routing
        self.max_bytes = max_bytes
        self.max_float_bytes = max_float_bytes
        self._values = WeakIdKeyDictionary()   # fake tensor -> real tensor
        self._assumed = WeakIdKeyDictionary()  # fake tensor -> True when its value is assumed
        self._stale = WeakIdKeyDictionary()    # fake storage -> True once written without values
        self._from_batch = WeakIdKeyDictionary()  # fake tensor -> True when its value came from the batch
        # fake tensor -> True when its value came from a random draw or the model's own state
        self._unrepeatable = WeakIdKeyDictionary()
        self.routing_calls = 0
        self.assumption_read = False
        self.batch_decided: str | None = None  # the first op whose sizes the batch's values decided
        self.state_decided: str | None = None  # ... that random draws or the model's buffers decided
        self._deciding_nothing = 0  # > 0 inside code whose reads decide no size
        self._building = 0  # > 0 while the model is built: floating values kept up to max_float_bytes

    # --- values --------------------------------------------------------------------------
    def value_of(self, tensor: torch.Tensor) -> torch.Tensor | None:
        """The real value of a tensor, when known (a real tensor is its own)."""
        if not isinstance(tensor, FakeTensor):
            return tensor
        value = self._values.get(tensor)
        if value is None or tensor.untyped_storage() in self._stale:
            return None
        return value

    def forget(self, tensors) -> None:
        """Drop the values of these tensors (the model's parameters once it is built)."""
        for tensor in tensors:
            if isinstance(tensor, FakeTensor):
                self._values.pop(tensor, None)
                self._stale[tensor.untyped_storage()] = True

    def mark_state(self, tensors) -> None:
        """Mark these tensors (the model's buffers once it is built) as state a step may change:
        a counter a forward increments and reads decides differently in each micro-step."""
        for tensor in tensors:
            if isinstance(tensor, FakeTensor):
                self._unrepeatable[tensor] = True

    def _remember(self, fake: Any, real: Any, assumed: bool, func: Any, tensors: list[torch.Tensor]) -> None:
        """Keep `real` as the value of `fake`, the output of `func` on `tensors`, with the marks
        its inputs pass on (assumed, from the batch, unrepeatable)."""
        from_batch, unrepeatable = self._is_from_batch(func, tensors), self._is_unrepeatable(func, tensors)
        fakes, reals = tree_flatten(fake)[0], tree_flatten(real)[0]
        if len(fakes) != len(reals):
            return
        for f, r in zip(fakes, reals):
            if isinstance(f, FakeTensor) and isinstance(r, torch.Tensor) and f.shape == r.shape \
                    and f.dtype == r.dtype:
                self._values[f] = r
                for marks, marked in ((self._assumed, assumed), (self._from_batch, from_batch),
                                      (self._unrepeatable, unrepeatable)):
                    if marked:
                        marks[f] = True
                    else:
                        marks.pop(f, None)

    def _is_from_batch(self, func, tensors: list[torch.Tensor]) -> bool:
        """Whether any of these inputs holds values from the batch: a real tensor entering the
        fake step (other than a constant being lifted), or a fake one computed from such."""
        return any(t in self._from_batch if isinstance(t, FakeTensor) else func not in LIFT_OPS
                   for t in tensors)

    def _is_unrepeatable(self, func, tensors: list[torch.Tensor]) -> bool:
        """Whether `func` draws random numbers, or any input holds values from a draw or from
        the model's state: values another step, or the same step at another size, may not see."""
        return torch.Tag.nondeterministic_seeded in func.tags or \
            any(isinstance(t, FakeTensor) and t in self._unrepeatable for t in tensors)

    def _decided_by_batch(self, func, tensors: list[torch.Tensor]) -> None:
        """Note (once each) that the batch's values, or values drawn at random or read from the
        model's state, decided what `func` did, when they did (not while the model is built:
        weight initialisation reads its own random draws)."""
        if self._deciding_nothing or self._building:
            return
        if self.batch_decided is None and self._is_from_batch(func, tensors):
            self.batch_decided = op_name(func)
        if self.state_decided is None and self._is_unrepeatable(func, tensors):
            self.state_decided = op_name(func)

    @contextlib.contextmanager
    def building(self) -> Iterator[None]:
        """While the model is built, floating tensors' values are kept only up to
        `max_float_bytes`: its weights are floating, and most are larger."""
        self._building += 1
        try:
            yield
        finally:
            self._building -= 1

    @contextlib.contextmanager
    def deciding_nothing(self) -> Iterator[None]:
        """Code run in here reads values from the batch that decide no size (a check that only
        logs a warning): `batch_decided` does not count them."""
        self._deciding_nothing += 1
        try:
            yield
        finally:
            self._deciding_nothing -= 1

    def _small(self, out: Any) -> bool:
        return all(t.untyped_storage().nbytes() <= (self.max_float_bytes if self._building and t.is_floating_point()
                                                    else self.max_bytes)
                   for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor))

    def _real(self, func, args, kwargs, tensors: list[torch.Tensor]) -> Any:
        """Run `func` for real on the inputs' values."""
        values = {id(t): self.value_of(t) for t in tensors}
        swap = lambda x: values[id(x)] if isinstance(x, torch.Tensor) else x  # noqa: E731
        with unset_fake_temporarily(), torch.no_grad():
            return func(*tree_map(swap, args), **tree_map(swap, kwargs))

    # --- dispatch -------------------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        known = all(self.value_of(t) is not None for t in tensors)
        assumed = any(t in self._assumed for t in tensors if isinstance(t, FakeTensor))
        if func is aten._local_scalar_dense.default:
            return self._read(func, args[0], known, assumed)
        try:
            kernel = FAKE_KERNELS.get(func)
            out = kernel(*args, **kwargs) if kernel is not None else func(*args, **kwargs)
        except (DynamicOutputShapeException, DataDependentOutputException):
            return self._data_dependent(func, args, kwargs, tensors, known, assumed)
        except UnsupportedOperatorException:
            if (known and tensors) or func in SIZE_INPUTS:
                return self._data_dependent(func, args, kwargs, tensors, known, assumed)
            raise UnmodelledOp(op_name(func), "it has no fake kernel, and its inputs' values are not known") from None
        except Exception as exc:
            if func.namespace in ("aten", "prims", "prim"):
                raise  # torch's own ops fail on fake tensors as on real ones (shapes, dtypes)
            if known and tensors:
                return self._data_dependent(func, args, kwargs, tensors, known, assumed)
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise UnmodelledOp(op_name(func), f"its fake kernel failed ({first[:160]})") from None
        written = written_arguments(func, args, kwargs)
        if known and self._small(out):
            try:
                self._remember(out, self._real(func, args, kwargs, tensors), assumed, func, tensors)
                return out
            except Exception:  # a value is a help, never a requirement: forget it
                pass
        for tensor in written:  # written with values we do not have: its old value is stale
            if isinstance(tensor, FakeTensor):
                self._stale[tensor.untyped_storage()] = True
        if func in ROUTING_OPS and not known:
            self._assume_routing(func, args, kwargs, out)
        return out

    def _read(self, func, tensor: torch.Tensor, known: bool, assumed: bool) -> Any:
        if known:
            self.assumption_read |= assumed
            self._decided_by_batch(func, [tensor])  # a value read on the host may decide sizes
            with unset_fake_temporarily():
                return self.value_of(tensor).item()
        try:
            return func(tensor)  # fake tensors made from real scalars keep their value
        except DataDependentOutputException:
            raise UnmodelledOp("aten._local_scalar_dense (.item())",
                               f"reads the value of a {tuple(tensor.shape)} {str(tensor.dtype).replace('torch.', '')} "
                               "tensor computed from weights or activations, whose values the estimate does not hold"
                               ) from None

    def _data_dependent(self, func, args, kwargs, tensors, known: bool, assumed: bool) -> Any:
        """A result whose size depends on values: run it for real, give the fake result its sizes."""
        if not known:
            if func in NOT_MODELLED:
                raise UnmodelledOp(op_name(func), NOT_MODELLED[func])
            if func in SIZE_INPUTS:
                return self._sized_by_some(func, args, kwargs)
            raise UnmodelledOp(op_name(func), "its output size depends on the values of tensors computed "
                                              "from weights or activations, which the estimate does not hold")
        self.assumption_read |= assumed
        self._decided_by_batch(func, tensors)
        real = self._real(func, args, kwargs, tensors)
        out = tree_map(_fake_like, real)
        self._remember(out, real, assumed, func, tensors)
        return out

    def _sized_by_some(self, func, args, kwargs) -> Any:
        """An op of `SIZE_INPUTS` whose size-deciding inputs are known and others are not: its
        outputs with the real sizes, and no values (they depend on the unknown inputs)."""
        named = bound_arguments(func, args, kwargs)
        deciding = [t for name in SIZE_INPUTS[func] for t in tree_flatten(named.get(name))[0]
                    if isinstance(t, torch.Tensor)]
        if func is aten.index.Tensor:  # integer indices lend their shapes only, masks their values
            deciding = [t for t in deciding if t.dtype in (torch.bool, torch.uint8)]
        unknown = [t for t in deciding if self.value_of(t) is None]
        if unknown:
            raise UnmodelledOp(op_name(func), f"its output size depends on the values of its "
                                              f"{' and '.join(SIZE_INPUTS[func])}, computed from weights or "
                                              "activations, which the estimate does not hold")
        self.assumption_read |= any(t in self._assumed for t in deciding if isinstance(t, FakeTensor))
        self._decided_by_batch(func, deciding)
        if func is aten.index.Tensor:
            # What the real kernel does first (`expandTensors`): each boolean mask becomes one
            # integer index per dimension, `nonzero` of the mask; the fake kernel takes those.
            indices = []
            for index in args[1]:
                value = None if index is None else self.value_of(index)
                if value is not None and value.dtype in (torch.bool, torch.uint8):
                    with unset_fake_temporarily():
                        nonzero = value.nonzero()
                    indices += [nonzero.select(1, j) for j in range(value.dim())]
                else:
                    indices.append(index)
            return func(args[0], indices)
        if func is aten.masked_select.default:
            # The real kernel resizes an empty result to the broadcast mask's count of trues.
            source, mask = named["self"], self.value_of(named["mask"])
            shape = torch.broadcast_shapes(source.shape, mask.shape)
            with unset_fake_temporarily():
                count = int(mask.expand(shape).count_nonzero())
            return torch.empty((count,), dtype=source.dtype, device=source.device)
        # The ctc_loss kernels: run for real, the unknown inputs replaced by zeros of their sizes,
        # strides and dtypes (their values change the outputs' values, not their sizes).
        values = {}
        with unset_fake_temporarily():
            for tensor in tree_flatten((args, kwargs))[0]:
                if isinstance(tensor, torch.Tensor):
                    value = self.value_of(tensor)
                    values[id(tensor)] = value if value is not None else \
                        torch.empty_strided(tensor.shape, tensor.stride(), dtype=tensor.dtype).zero_()
            swap = lambda x: values[id(x)] if isinstance(x, torch.Tensor) else x  # noqa: E731
            with torch.no_grad():
                real = func(*tree_map(swap, args), **tree_map(swap, kwargs))
        return tree_map(_fake_like, real)

    def _assume_routing(self, func, args, kwargs, out) -> None:
        """Give the indices of a top-k over unknown scores the assumed routing."""
        source = args[0]
        if func is aten.topk.default:
            k = args[1]
            dim = args[2] if len(args) > 2 else kwargs.get("dim", -1)
        else:
            dim = args[1] if len(args) > 1 else kwargs.get("dim")
            if dim is None:
                return
            k = None
        indices = out[ROUTING_OPS[func]] if isinstance(out, (tuple, list)) else out
        if not isinstance(indices, FakeTensor) or source.dim() == 0:
            return
        choices = source.size(dim)
        with unset_fake_temporarily():
            value = routing_indices(tuple(source.shape), dim, choices, k or 1, self.moe_routing)
            if k is None:
                keepdim = args[2] if len(args) > 2 else kwargs.get("keepdim", False)
                value = value if keepdim else value.squeeze(dim)
            real = torch.empty_strided(indices.shape, indices.stride(), dtype=indices.dtype)
            real.copy_(value.reshape(indices.shape))
        self._values[indices] = real
        self._assumed[indices] = True
        self.routing_calls += 1


__all__ = ["KnownValues", "MOE_ROUTINGS", "routing_indices"]
