"""Memory levers beside accumulation: activation checkpointing, frozen parameters (and LoRA
adapters), torch.compile. One entry point, `apply_levers(model, levers, workload)`, turns a built
model into the levered one; `with_levers(workload, levers)` makes a workload whose `build_model`
does that and whose optimizer holds the trainable parameters only, so every path that builds a
model (the runner, the estimate meter's fake build, `check`) gets the same levered model.

Patterns (`--checkpoint`, `--freeze`, `--trainable`, LoRA `targets`): one or more shell-style
globs separated by `|`, matched case-sensitively against a module's qualified name
(`blocks.0.attn`), the name's last component (`attn`) or its class name (`Block`); a parameter matches when its qualified name or the
name of a module holding it does (`blocks.0` freezes everything under it; `*.bias` every bias).

- Checkpointing: each matching module (the outermost of nested matches) runs its forward under
  non-reentrant `torch.utils.checkpoint` (use_reentrant=False, RNG state preserved, so dropout
  draws the same masks when recomputed). The module's class is swapped for a subclass whose
  forward does that, instead of `checkpoint_wrapper`, because the wrapper renames every
  parameter (`_checkpoint_wrapped_module.`), which freeze patterns and `check`'s per-parameter
  report match on. `--checkpoint blocks` means the workload's `checkpoint_blocks` pattern
  (GPT and multi-task: every transformer `Block`; ConvNets: every conv stage).
- Freezing: `requires_grad=False`; the optimizer is built over the trainable parameters only.
- LoRA: each matching `nn.Linear` (or transformers' `Conv1D`, GPT-2's layers) becomes
  `LoRALinear` (base weight and bias frozen, two trainable low-rank factors A (r x in) and
  B (out x r), B zero-initialised); every other parameter is frozen too unless `--trainable`
  names it (peft's default).
- Compile: `torch.compile(model)` (default backend), applied last, so patterns match the
  model's own names.
  `CompileClock` times compilation through dynamo's compile callbacks, so it is recorded apart
  from step times, and counts recompilations. Each compiled case starts from `torch._dynamo.reset()`
  and compiles afresh: a compiled forward run once under a dispatch mode (the cpu meter's
  tracker, the FLOP counter) would otherwise run eagerly for the rest of the process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
import time
from collections import Counter
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint as torch_checkpoint

CHECKPOINT_NONE = "none"
CHECKPOINT_BLOCKS = "blocks"
# Why the estimate meter refuses --compile (one line for the user).
ESTIMATE_REFUSES_COMPILE = (
    "the estimate meter does not predict --compile: its fake tensors run the eager ops one by one "
    "under a dispatch mode, which torch.compile falls back from, so Inductor's fusion and buffer "
    "reuse would be invisible; measure compiled cases with `run` (the eager estimate, without "
    "--compile, is a guide: on an H200 GPT-2's compiled micro-batch 8 peaked 0.09% above its eager "
    "one, results/NVIDIA-H200/levers/)"
)
# Why check refuses --compile.
CHECK_REFUSES_COMPILE = (
    "check does not take --compile: it runs every comparison on a fresh deep copy of the model "
    "in float64, each of which would compile again; compare compiled steps with `run`"
)
# What the cpu meter's peak means for a compiled case.
CPU_METER_COMPILE_NOTE = (
    "compile: peak memory counted on the eager step (torch.compile falls back to eager under the "
    "cpu meter's dispatch-mode tracker); step times are of the compiled step, timed before it"
)


class LeverError(ValueError):
    """A lever setting that cannot be applied; the message is one line for the user."""


# --- the settings ----------------------------------------------------------------------------

@dataclass(frozen=True)
class LoRASpec:
    """`--lora r=8,targets=qkv|proj[,alpha=16][,dropout=0.05]`: rank, targets, scale alpha/r."""

    r: int
    targets: str
    alpha: float | None = None
    dropout: float = 0.0

    @property
    def scaling(self) -> float:
        """alpha / r (alpha defaults to r: scaling 1)."""
        return (self.alpha if self.alpha is not None else self.r) / self.r

    def text(self) -> str:
        """Canonical text: what records and case ids carry."""
        parts = [f"r={self.r}"]
        if self.alpha is not None:
            parts.append(f"alpha={_number(self.alpha)}")
        if self.dropout:
            parts.append(f"dropout={_number(self.dropout)}")
        return ",".join(parts + [f"targets={self.targets}"])


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def parse_lora(text: str) -> LoRASpec:
    """Parse a `--lora` value; LeverError names what is wrong."""
    fields: dict[str, str] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or not key.strip() or not value.strip():
            hint = "; separate targets with '|', e.g. targets=qkv|proj" if not sep and fields.get("targets") else ""
            raise LeverError(f"--lora takes r=N,targets=PATTERN[,alpha=A][,dropout=P], got {text!r}{hint}")
        if key.strip() in fields:
            raise LeverError(f"--lora: {key.strip()} is given twice in {text!r}")
        fields[key.strip()] = value.strip()
    unknown = set(fields) - {"r", "targets", "alpha", "dropout"}
    if unknown:
        raise LeverError(f"--lora: unknown key(s) {', '.join(sorted(unknown))}; known: r, targets, alpha, dropout")
    if "r" not in fields or "targets" not in fields:
        raise LeverError(f"--lora needs r=N and targets=PATTERN, got {text!r}")
    try:
        r = int(fields["r"])
        alpha = float(fields["alpha"]) if "alpha" in fields else None
        dropout = float(fields.get("dropout", 0.0))
    except ValueError:
        raise LeverError(f"--lora: r must be an integer, alpha and dropout numbers, got {text!r}") from None
    if r < 1 or not 0.0 <= dropout < 1.0 or (alpha is not None and not 0 < alpha < math.inf):
        raise LeverError(f"--lora: r >= 1, a finite alpha > 0 and 0 <= dropout < 1 needed, got {text!r}")
    return LoRASpec(r, fields["targets"], alpha, dropout)


@dataclass(frozen=True)
class Levers:
    """The lever settings of one case (all off by default)."""

    checkpoint: str = CHECKPOINT_NONE
    freeze: str | None = None
    trainable: str | None = None
    lora: str | None = None
    compile: bool = False

    def __post_init__(self) -> None:
        for name in ("checkpoint", "freeze", "trainable"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not globs(value)):
                raise LeverError(f"--{name} takes a pattern (globs separated by |), got {value!r}")
        if self.lora is not None:
            object.__setattr__(self, "lora", parse_lora(self.lora).text())

    @classmethod
    def of(cls, case: Any) -> "Levers":
        """The levers a `Case` (or anything with the same attributes) sets."""
        return cls(**{f.name: getattr(case, f.name) for f in dataclasses.fields(cls)})

    @property
    def active(self) -> bool:
        """True when any lever is on."""
        return self != Levers()

    @property
    def freezes(self) -> bool:
        """True when some parameters will be frozen (freeze, trainable or LoRA)."""
        return bool(self.freeze or self.trainable or self.lora)

    def id_parts(self) -> list[str]:
        """What a case id adds for these levers: nothing at the defaults (old ids stay valid)."""
        parts = []
        if self.checkpoint != CHECKPOINT_NONE:
            parts.append(f"ckpt-{self.checkpoint}")
        if self.trainable:
            parts.append(f"trainable-{self.trainable}")
        if self.freeze:
            parts.append(f"freeze-{self.freeze}")
        if self.lora:
            parts.append(f"lora-{self.lora}")
        if self.compile:
            parts.append("compile")
        return parts

    def describe(self) -> str:
        """A short label for tables and figures ("eager" when no lever is on)."""
        return " + ".join(self.id_parts()) or "eager"

    def fields(self) -> dict[str, Any]:
        """The record's lever fields."""
        return dataclasses.asdict(self)


# --- patterns --------------------------------------------------------------------------------

def globs(pattern: str) -> list[str]:
    """The globs of a pattern: `Block|*.mlp` -> ["Block", "*.mlp"]."""
    return [g.strip() for g in pattern.split("|") if g.strip()]


def module_matches(name: str, module: nn.Module, pattern: str) -> bool:
    """Does the module's qualified name, its last component (`qkv` for `blocks.0.attn.qkv`, as
    peft's target_modules) or its class name match one of the pattern's globs?"""
    cls, last = type(module).__name__, name.rpartition(".")[2]
    return any(fnmatchcase(name, g) or fnmatchcase(last, g) or fnmatchcase(cls, g) for g in globs(pattern))


def matching_parameters(model: nn.Module, pattern: str) -> dict[str, nn.Parameter]:
    """The parameters the pattern names, directly or through a module that holds them (by the
    module's name or class), by qualified name (a tied parameter may appear under two names)."""
    found: dict[str, nn.Parameter] = {}
    patterns = globs(pattern)
    for module_name, module in model.named_modules(remove_duplicate=False):  # a layer under each of its names
        hit = module_matches(module_name, module, pattern)
        for pname, param in module.named_parameters(recurse=hit, prefix=module_name, remove_duplicate=False):
            if hit or any(fnmatchcase(pname, g) for g in patterns):
                found[pname] = param
    return found


# --- activation checkpointing ----------------------------------------------------------------

_CHECKPOINTED: dict[type, type] = {}


def _checkpointed_class(cls: type) -> type:
    """A subclass of `cls` whose forward runs under non-reentrant checkpointing (made once)."""
    if cls not in _CHECKPOINTED:
        def forward(self, *args, **kwargs):
            # RNG state is saved and restored for the recomputation (preserve_rng_state default).
            return torch_checkpoint(super(subclass, self).forward, *args, use_reentrant=False, **kwargs)

        subclass = type(f"Checkpointed{cls.__name__}", (cls,),
                        {"forward": forward, "__module__": cls.__module__, "__qualname__": f"Checkpointed{cls.__qualname__}"})
        _CHECKPOINTED[cls] = subclass
    return _CHECKPOINTED[cls]


_CONTAINERS = (nn.ModuleList, nn.ModuleDict, nn.ParameterList, nn.ParameterDict)


def apply_checkpointing(model: nn.Module, pattern: str) -> list[str]:
    """Checkpoint every module matching `pattern` (outermost of nested matches; never the root,
    never a container such as `nn.ModuleList`, whose forward never runs). Returns the qualified
    names wrapped; LeverError when nothing matches."""
    wrapped: list[str] = []
    for name, module in list(model.named_modules(remove_duplicate=False)):  # a module under each of its names
        if not name or any(name.startswith(w + ".") for w in wrapped):
            continue
        if type(module) in _CHECKPOINTED.values():
            continue
        # A container's forward never runs (its owner calls the children): checkpointing it would
        # do nothing, so a match there goes on to its children, which match as they are named.
        if isinstance(module, _CONTAINERS):
            continue
        if module_matches(name, module, pattern):
            module.__class__ = _checkpointed_class(type(module))
            wrapped.append(name)
    if not wrapped:
        raise LeverError(f"--checkpoint {pattern!r} matches no module of the model (patterns are globs over "
                         f"qualified names such as 'blocks.0' and class names such as 'Block' or '*DecoderLayer')"
                         f"{_container_hint(model, pattern) or _repeated_classes(model)}")
    return wrapped


def _repeated_classes(model: nn.Module) -> str:
    """'; its repeated modules: LlamaDecoderLayer x16, ...': the classes that occur more than
    once below the root with parameters of their own below them, most frequent first (blocks
    are what one checkpoints, and blocks repeat); empty when none repeats."""
    counts = Counter(type(module).__name__ for name, module in model.named_modules()
                     if name and len(module._modules) and any(True for _ in module.parameters()))
    repeated = sorted(((n, c) for c, n in counts.items() if n > 1), key=lambda item: (-item[0], item[1]))
    return "; its repeated modules: " + ", ".join(f"{c} x{n}" for n, c in repeated[:6]) if repeated else ""


def checkpointed_modules(model: nn.Module) -> list[str]:
    """Names of the modules that run under checkpointing."""
    return [name for name, m in model.named_modules() if type(m) in _CHECKPOINTED.values()]


# --- frozen parameters and LoRA --------------------------------------------------------------

class LoRALinear(nn.Module):
    """`base(x) + scaling * B(A(dropout(x)))`: a frozen linear layer plus a trainable low-rank
    update (A: r x in, Kaiming-uniform; B: out x r, zeros, so training starts at the base). The
    base is an `nn.Linear` or transformers' `Conv1D` (GPT-2's layers: the same map with its
    weight stored in x out); the update does not depend on how the base stores its weight."""

    def __init__(self, base: nn.Module, r: int, scaling: float, dropout: float = 0.0) -> None:
        super().__init__()
        self.base = base
        in_features, out_features = linear_features(base)
        weight = base.weight
        self.lora_A = nn.Parameter(torch.empty(r, in_features, dtype=weight.dtype, device=weight.device))
        self.lora_B = nn.Parameter(torch.zeros(out_features, r, dtype=weight.dtype, device=weight.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.scaling = scaling
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B)
        return self.base(x) + update * self.scaling


def linear_features(module: nn.Module) -> tuple[int, int] | None:
    """(in, out) features of a linear layer LoRA can adapt: an `nn.Linear`, or transformers'
    `Conv1D` (looked up only when transformers is already imported: a model without it has
    none); None for any other module."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    pytorch_utils = sys.modules.get("transformers.pytorch_utils")
    conv1d = getattr(pytorch_utils, "Conv1D", None)
    if conv1d is not None and isinstance(module, conv1d):
        return tuple(module.weight.shape)  # (in, out): y = x @ W + b
    return None


def apply_lora(model: nn.Module, spec: LoRASpec) -> list[str]:
    """Replace each linear layer (`linear_features`) matching `spec.targets` with a
    `LoRALinear`; returns their names."""
    targets = [(name, m) for name, m in model.named_modules(remove_duplicate=False)  # every name a layer has
               if name and linear_features(m) is not None and module_matches(name, m, spec.targets)]
    if not targets:
        # Name what there is to target: the last components of the model's linear layers.
        names = sorted({name.rpartition(".")[2] for name, m in model.named_modules()
                        if name and linear_features(m) is not None})
        found = f"; its linear layers are named {', '.join(names[:12])}{', ...' if len(names) > 12 else ''}" \
            if names else "; it has none"
        raise LeverError(f"--lora targets={spec.targets!r} matches no linear layer of the model "
                         f"(nn.Linear, or transformers' Conv1D){found}")
    parents = [(name, child, model.get_submodule(parent_name) if parent_name else model, linear)
               for name, linear in targets for parent_name, _, child in [name.rpartition(".")]]
    unadaptable = [name for name, _, parent, _ in parents if isinstance(parent, nn.MultiheadAttention)]
    if unadaptable:
        # MultiheadAttention passes out_proj.weight to F.multi_head_attention_forward instead of
        # calling the layer: an adapter there would never run (and its weight is gone).
        raise LeverError(f"--lora cannot adapt {unadaptable[0]}: nn.MultiheadAttention reads its out_proj's "
                         "weight instead of calling the layer; target other linear layers (e.g. linear1|linear2 "
                         "of nn.TransformerEncoderLayer)")
    adapters: dict[int, LoRALinear] = {}
    for _, child, parent, linear in parents:
        setattr(parent, child, adapters.setdefault(id(linear), LoRALinear(linear, spec.r, spec.scaling,
                                                                           spec.dropout)))
    # A layer registered under two names (`self.b = self.a`) is one layer: every name that still
    # holds it gets its adapter, or calls through the other name would bypass it (base frozen).
    for module in list(model.modules()):
        if isinstance(module, LoRALinear):
            continue  # its `base` is the layer itself
        for key, child in list(module._modules.items()):
            if child is not None and id(child) in adapters:
                module._modules[key] = adapters[id(child)]
    return [name for name, _ in targets]


def apply_freezing(model: nn.Module, levers: Levers) -> None:
    """Set `requires_grad` as the levers say: `--trainable` keeps only its matches trainable,
    LoRA freezes everything but the adapters (and `--trainable`'s matches), `--freeze` freezes
    its matches. LeverError for a pattern that matches nothing or nothing left trainable.
    Parameters are compared by identity, so a tied weight is one parameter under two names."""
    adapters = {id(m.lora_A) for m in model.modules() if isinstance(m, LoRALinear)} | \
        {id(m.lora_B) for m in model.modules() if isinstance(m, LoRALinear)}
    if levers.trainable:
        keep = {id(p) for p in matching_parameters(model, levers.trainable).values()}
        if not keep:
            raise LeverError(f"--trainable {levers.trainable!r} matches no parameter of the model")
        if not keep - adapters:
            raise LeverError(f"--trainable {levers.trainable!r} matches only LoRA adapters, which train anyway; "
                             "name the model's own parameters to train beside them, or leave --trainable out")
        for p in model.parameters():
            p.requires_grad_(id(p) in keep or id(p) in adapters)
    elif levers.lora:
        for p in model.parameters():
            p.requires_grad_(id(p) in adapters)
    if levers.freeze:
        frozen = matching_parameters(model, levers.freeze)
        if not frozen:
            raise LeverError(f"--freeze {levers.freeze!r} matches no parameter of the model")
        for p in frozen.values():
            p.requires_grad_(False)
    if not any(p.requires_grad for p in model.parameters()):
        raise LeverError("the freeze/trainable/lora settings leave no trainable parameter")


# --- the entry point -------------------------------------------------------------------------

def apply_levers(model: nn.Module, levers: Levers, workload: Any = None) -> nn.Module:
    """The levered model: LoRA adapters, frozen parameters, checkpointing, then compile (in
    that order: adapters inside a checkpointed block are recomputed with it). `workload`
    resolves `--checkpoint blocks` (its `checkpoint_blocks` pattern)."""
    if levers.lora:
        apply_lora(model, parse_lora(levers.lora))
    if levers.freezes:
        apply_freezing(model, levers)
    if levers.checkpoint != CHECKPOINT_NONE:
        apply_checkpointing(model, checkpoint_pattern(levers.checkpoint, workload))
    if levers.compile:
        # torch.compile's wrapper (parameters then read `_orig_mod.<name>`), not Module.compile():
        # on torch 2.13 that in-place variant left the forward eager in our tests (no compilation).
        model = torch.compile(model)
    return model


def checkpoint_pattern(setting: str, workload: Any = None) -> str:
    """The module pattern `--checkpoint` names: `blocks` is the workload's own definition."""
    if setting != CHECKPOINT_BLOCKS:
        return setting
    pattern = getattr(workload, "checkpoint_blocks", None)
    if not pattern:
        name = getattr(workload, "name", "this workload")
        raise LeverError(f"--checkpoint blocks: {name} does not say what its blocks are; give a pattern "
                         f"of module names or classes instead, e.g. --checkpoint 'layers.*' or --checkpoint DecoderLayer")
    return pattern


def with_levers(workload: Any, levers: Levers) -> Any:
    """The workload with the levers applied to every model it builds, and its optimizer built
    over the trainable parameters only (frozen ones get no state). Unchanged when none is on."""
    if not levers.active:
        return workload
    build, optimizer_factory = workload.build_model, workload.build_optimizer
    from accumbench.workloads.base import default_optimizer

    factory = optimizer_factory or default_optimizer

    def build_model() -> nn.Module:
        return apply_levers(build(), levers, workload)

    def build_optimizer(params):
        return factory([p for p in params if p.requires_grad])

    return dataclasses.replace(workload, build_model=build_model, build_optimizer=build_optimizer)


def check_levers(workload: Any, levers: Levers) -> list[str]:
    """Build one model of the workload with the levers on the meta device (no memory; compile
    is lazy, so nothing compiles), so a bad pattern fails before anything is measured. Raises
    LeverError: the lever's own, or one line naming the workload and the exception when its
    `build_model` raises anything else (a plug-in can raise anything; the commands turn the
    line into exit 2 instead of a traceback). Returns a warning per alternative of a `|`
    pattern that matches nothing while the others do (`unmatched_alternatives`)."""
    try:
        with torch.device("meta"):
            levered = with_levers(workload, levers).build_model()
            return unmatched_alternatives(workload.build_model(), levers, workload, levered)
    except LeverError:
        raise
    except Exception as exc:
        detail = f": {str(exc).splitlines()[0]}" if str(exc).strip() else ""
        raise LeverError(f"workload {workload.name}: build_model raised {type(exc).__name__}{detail}") from exc


def unmatched_alternatives(model: nn.Module, levers: Levers, workload: Any = None,
                           levered: nn.Module | None = None) -> list[str]:
    """One line per alternative of a lever's `|` pattern that matches nothing in `model` (the
    model as built, before any lever; `--freeze`/`--trainable` also in `levered`, which holds
    the LoRA adapters): a pattern errs only when no alternative matches (as peft's
    target_modules), so a typo in one alternative would otherwise pass unseen."""
    modules = [(name, m) for name, m in model.named_modules(remove_duplicate=False) if name]

    def parameters(g: str) -> bool:
        return any(matching_parameters(m, g) for m in (model, levered) if m is not None)

    tests: list[tuple[str, str | None, Callable[[str], bool], str]] = [
        ("--checkpoint", checkpoint_pattern(levers.checkpoint, workload) if levers.checkpoint != CHECKPOINT_NONE
         else None, lambda g: any(module_matches(n, m, g) for n, m in modules if not isinstance(m, _CONTAINERS)),
         "module"),
        ("--lora targets", parse_lora(levers.lora).targets if levers.lora else None,
         lambda g: any(module_matches(n, m, g) for n, m in modules if linear_features(m) is not None),
         "linear layer"),
        ("--freeze", levers.freeze, parameters, "parameter"),
        ("--trainable", levers.trainable, parameters, "parameter"),
    ]
    return [f"{flag} {pattern!r}: {g!r} matches no {what} of the model (the other alternatives do)"
            + (_container_hint(model, g) if flag == "--checkpoint" else "")
            for flag, pattern, matches, what in tests if pattern and len(globs(pattern)) > 1
            for g in globs(pattern) if not matches(g)]


def _container_hint(model: nn.Module, pattern: str) -> str:
    """'; 'blocks' names a ModuleList, whose forward never runs: give its members, e.g.
    'blocks.*'' when the pattern matches containers only; empty otherwise."""
    containers = [(n, m) for n, m in model.named_modules() if n and isinstance(m, _CONTAINERS)
                  and module_matches(n, m, pattern)]
    if not containers:
        return ""
    name, module = containers[0]
    return (f"; {name!r} is a {type(module).__name__}, whose forward never runs: give its members, "
            f"e.g. '{name}.*'")


def trainable_parameters(model: nn.Module) -> int:
    """Elements of the parameters that receive gradients (tied ones once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# --- compile time ----------------------------------------------------------------------------

class CompileClock:
    """Wall time spent compiling (dynamo frames, lazily compiled backwards, CUDA-graph
    recordings), from torch._dynamo's compile callbacks, and how many compilations ran."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self.seconds = 0.0
        self.compilations = 0
        self._started: float | None = None

    def _start(self, _args) -> None:
        self._started = self.clock()

    def _end(self, _args) -> None:
        if self._started is not None:
            self.seconds += self.clock() - self._started
            self._started = None
        self.compilations += 1

    @contextlib.contextmanager
    def watching(self) -> Iterator["CompileClock"]:
        """Count compilations while inside."""
        import torch._dynamo

        handler = torch._dynamo.callback_handler
        handler.register_start_callback(self._start)
        handler.register_end_callback(self._end)
        try:
            yield self
        finally:
            handler.remove_start_callback(self._start)
            handler.remove_end_callback(self._end)


@dataclass(frozen=True)
class CompiledMeasurement:
    """A measurement of a compiled case and what compiling cost."""

    measurement: Any
    compile_time_s: float
    recompiles: int


def measure_compiled(measure: Callable[[], Any], step: Callable[[], None]) -> CompiledMeasurement:
    """Run one step outside the meter (it compiles forward and backward: its compile time is
    recorded, its step never measured), then the meter's `measure()`. Compilations during the
    meter's steps are recompilations: the case fails rather than put compile time into step
    times."""
    # A compiled forward that once ran under a TorchDispatchMode (the cpu meter's tracker, the
    # runner's FLOP counter) runs eagerly from then on in this process, new models included,
    # until dynamo is reset: every compiled case starts from a reset, and compiles afresh.
    torch._dynamo.reset()
    clock = CompileClock()
    with clock.watching():
        step()
        compile_time, compiled = clock.seconds, clock.compilations
        measurement = measure()
    recompiles = clock.compilations - compiled
    if recompiles:
        raise RuntimeError(f"torch.compile recompiled {recompiles} time(s) during the measured steps "
                           "(a guard failed); their step times would include compilation")
    return CompiledMeasurement(measurement, compile_time, recompiles)


def measure_levered(case: Any, meter: Any, prepared: Any, steps: Any) -> tuple[Any, dict[str, Any]]:
    """The meter's measurement of a prepared case timed under `steps` (a count or a
    `StepPolicy`), and the record fields its levers add: for a compiled case, the compile step
    first (`measure_compiled`) and its compile time. The estimate meter refuses compiled cases
    (`ESTIMATE_REFUSES_COMPILE`)."""

    def measure():
        return meter.measure(prepared.step, prepared.state, prepared.batches, case.warmup, steps)

    if not getattr(case, "compile", False):
        return measure(), {}
    if meter.name == "estimate":
        raise LeverError(ESTIMATE_REFUSES_COMPILE)
    result = measure_compiled(measure, prepared.step)
    fields: dict[str, Any] = {"compile_time_s": result.compile_time_s}
    if meter.name == "cpu":
        fields["lever_note"] = CPU_METER_COMPILE_NOTE
    return result.measurement, fields


def levered_check_record(record: Any, levers: Levers) -> Any:
    """A `check` record with the levers it ran under: their fields, and their id parts."""
    if not levers.active:
        return record
    return dataclasses.replace(record, case_id="/".join([record.case_id, *levers.id_parts()]), **levers.fields())


def levered_record(record: Any, fields: dict[str, Any]) -> Any:
    """The record with the fields `measure_levered` returned."""
    return dataclasses.replace(record, **fields) if fields else record


__all__ = [
    "CHECKPOINT_BLOCKS", "CHECKPOINT_NONE", "CompileClock", "CompiledMeasurement", "LeverError", "Levers",
    "LoRALinear", "LoRASpec", "apply_checkpointing", "apply_freezing", "apply_levers", "apply_lora",
    "check_levers", "checkpoint_pattern", "levered_check_record", "checkpointed_modules", "globs", "levered_record",
    "linear_features", "matching_parameters", "measure_compiled", "measure_levered", "module_matches", "parse_lora", "trainable_parameters", "with_levers",
]
