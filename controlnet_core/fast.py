"""Doing less work per UNet call: what stays exact, and the opt-in fast mode that does not.

Exact (always on, results unchanged):
- an entry that adds nothing at a step costs nothing: outside its range, strength 0, every slot
  weight 0, or no row it controls (stack.py);
- rows of one call whose inputs are identical are computed once (`unique_rows`): the cond and uncond
  rows of a ControlNeXt call (it reads only the timestep and its image), or of a ControlNet call whose
  positive and negative carry the same text, latents of a batch that are the same. The stack does it
  for systems that declare what they read per row (`ControlModel.row_inputs`); ControlNeXt, whose
  addition is a function of each row's hidden state, shares its feature inside its own `additions`.
  Rows are compared bit for bit on the device in one pass. Each shared row gets bit for bit what
  computing that row alone gives; against a batch that computes the copies too, CPU kernels may
  round the last bits differently (their summation order depends on the batch size).

Not exact (opt-in per entry, `ControlEntry.reuse`, off by default):
- residual reuse (`ReusePolicy`): the control's additions are computed at one step and reused at the
  next ones, either every k steps or adaptively, once the timestep has moved far enough since the
  last computation. ControlNet residuals change slowly from step to step, so reusing them for a step
  or two costs little quality for k times less ControlNet work; bench/bench_fast.py measures both.
  Reuse never crosses a new generation, a new prompt or size, or a step at which the entry was off
  (a gap in its range or keyframes). A Union group whose entries share a speed mode reuses its one
  fused forward (stack.py).
"""
from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass

import torch

from .errors import ControlNetError, InputError
from .protocol import Addition, ControlModel, UNetCall

TIMESTEP_RANGE = 1000.0  # ldm UNets (SD1.x, SD2.x, SDXL) read discrete timesteps 0…999
MAX_REUSE_STATES = 8     # distinct call layouts one entry keeps reusable additions for (cond batches, areas…)


@dataclass(frozen=True)
class ReusePolicy:
    """When an entry recomputes its additions (fast mode, not exact).

    every: recompute at every k-th step, reuse the last result in between (1 = every step).
    moved: adaptive instead: recompute once the timestep has moved by this fraction of the
    1000-step range since the last computation (0.15: 150 timesteps, every 2 steps of a 10-step
    schedule, every 3 of a 20-step one)."""

    every: int = 1
    moved: float | None = None

    def __post_init__(self) -> None:
        if int(self.every) != self.every or self.every < 1:
            raise InputError(f"reuse every: expected a whole number of steps ≥ 1, found {self.every}")
        if self.moved is not None and not (0.0 < float(self.moved) <= 1.0):
            raise InputError(f"reuse moved: expected a fraction of the timestep range in (0, 1], found {self.moved}")

    @property
    def exact(self) -> bool:
        return self.every == 1 and self.moved is None

    def recompute(self, steps_since: int, moved: float) -> bool:
        """Whether a new step, `steps_since` steps and `moved` (fraction of the range) after the last
        computation, recomputes."""
        if self.moved is not None:
            return moved >= self.moved - 1e-6  # schedules in float: 0.15 must not read as 0.1499999
        return steps_since >= self.every


EXACT = ReusePolicy()
# The node's choices (per entry). Names are saved in workflows: never rename one.
SPEED_MODES: dict[str, ReusePolicy] = {
    "exact": EXACT,
    "fast: reuse 2 steps": ReusePolicy(every=2),
    "fast: reuse 3 steps": ReusePolicy(every=3),
    "fast: adaptive": ReusePolicy(moved=0.15),
}


def speed_mode(name: str) -> ReusePolicy:
    if name not in SPEED_MODES:
        raise InputError(f"speed_mode: expected one of {list(SPEED_MODES)}, found {name!r}")
    return SPEED_MODES[name]


# ---- exact: identical rows computed once ----------------------------------------------------------------

def unique_rows(call: UNetCall, frames: torch.Tensor, inputs: tuple[str, ...]) -> tuple[list[int], list[int]] | None:
    """(representative rows, group of each row) when some rows of `call` carry identical values of
    `inputs` and the same frame, else None. One device pass: each input's rows are compared all
    against all, and only the n×n verdict is read back."""
    n = frames.numel()
    if n < 2:
        return None
    same = frames.view(n, 1) == frames.view(1, n)
    for name in inputs:
        tensor = getattr(call, name)
        if tensor is None or tensor.shape[0] == 1:  # absent, or one row broadcast to every row
            continue
        flat = tensor.reshape(n, -1)
        verdict = torch.stack([(flat == flat[r]).all(dim=1) for r in range(n)])  # n×n, no n²×d buffer
        same = same & verdict.cpu()
    if bool(same.sum() == n):  # only the diagonal: nothing repeats
        return None
    representatives: list[int] = []
    group: list[int] = []
    for row in range(n):
        for index, rep in enumerate(representatives):
            if same[row, rep]:
                group.append(index)
                break
        else:
            group.append(len(representatives))
            representatives.append(row)
    return representatives, group


def _pick(tensor: torch.Tensor | None, rows: torch.Tensor) -> torch.Tensor | None:
    return tensor if tensor is None or tensor.shape[0] == 1 else tensor.index_select(0, rows.to(tensor.device))


def deduplicated_additions(model: ControlModel, call: UNetCall, prepared, frames: torch.Tensor) -> list[Addition]:
    """`model.additions` for these rows, each distinct row computed once and shared (exact)."""
    inputs = getattr(model, "row_inputs", None)
    found = None if inputs is None else unique_rows(call, frames, inputs)
    if found is None:
        return model.additions(call, prepared, frames)
    representatives, group = found
    reps = torch.tensor(representatives, dtype=torch.long)
    sub_call = UNetCall(_pick(call.x, reps), _pick(call.timesteps, reps), _pick(call.context, reps),
                        _pick(call.y, reps), call.layout)
    additions = model.additions(sub_call, prepared, frames.index_select(0, reps))
    if any(callable(a.value) for a in additions):  # a function of each row's own hidden state cannot be shared
        raise ControlNetError(f"{model.label} declares row_inputs but adds stream functions; share its rows inside "
                              "its own additions instead (as ControlNeXt does)")
    expand = torch.tensor(group, dtype=torch.long)
    return [Addition(a.target, a.slot, a.value.index_select(0, expand.to(a.value.device))) for a in additions]


# ---- not exact: residual reuse across steps -------------------------------------------------------------

class StepClock:
    """Numbers the steps of a generation as one entry's stack sees them: a call whose timesteps differ
    from the previous call's starts a new step. The stack ticks it on every call, also when the entry
    is off, so reusable additions can tell whether they were in use at the step just before."""

    def __init__(self) -> None:
        self.step = 0
        self._last: float | None = None

    def tick(self, timesteps: torch.Tensor) -> int:
        value = float(timesteps.detach().max())
        if value != self._last:
            self.step += 1
            self._last = value
        return self.step


@dataclass
class _Reusable:
    """One call layout's last computed additions and where in the schedule they were computed."""

    latent: tuple               # shape, dtype and device of x
    frames: torch.Tensor
    context: torch.Tensor
    y: torch.Tensor | None
    key: Hashable               # what else the additions depend on (a fused group: its members)
    computed_at: torch.Tensor   # timesteps of the computation
    last_seen: torch.Tensor     # timesteps of the latest call
    computed_step: int          # StepClock steps of the computation and of the latest call
    seen_step: int
    additions: list[Addition]

    def serves(self, call: UNetCall, frames: torch.Tensor, key: Hashable) -> bool:
        return (self.latent == _latent_key(call) and self.key == key and torch.equal(self.frames, frames)
                and _same(self.context, call.context) and _same(self.y, call.y))

    def reusable_at(self, policy: ReusePolicy, t: torch.Tensor, step: int) -> bool:
        """Whether the additions serve a call at timesteps `t` and clock step `step`."""
        if self.last_seen.shape != t.shape:
            return False
        if step == self.seen_step:
            return torch.equal(self.last_seen, t)  # another call of the same step
        if step != self.seen_step + 1:
            return False  # not in use at the step before (the entry was off in between): stale
        if bool((t > self.last_seen).any()):
            return False  # the timestep rose: a new generation, or noise added back
        self.seen_step, self.last_seen = step, t
        moved = float((self.computed_at - t).abs().max()) / TIMESTEP_RANGE
        return not policy.recompute(step - self.computed_step, moved)


def _latent_key(call: UNetCall) -> tuple:
    return tuple(call.x.shape), call.x.dtype, call.x.device


def _same(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    if a is None or b is None:
        return a is b
    return a.shape == b.shape and a.dtype == b.dtype and a.device == b.device and torch.equal(a, b)


def reused_additions(policy: ReusePolicy, states: list, step: int, call: UNetCall, frames: torch.Tensor,
                     compute: Callable[[], list[Addition]], key: Hashable = None) -> list[Addition]:
    """The additions for this call under `policy`: `compute()` or the ones kept in `states` (a list
    of _Reusable owned by the entry) from an earlier step. `step` is the entry's StepClock step.

    The additions are recomputed on the first call of a layout (latent shape, frames, text, y, `key`),
    when the policy says so, when the timestep rises (a new generation, or a sampler that adds noise
    back) and after a step at which they were not used (the entry was off): they are never carried
    across any of these. A reusing call does no other work (the hint embedding is not even looked up)."""
    t = call.timesteps.detach()
    state = next((s for s in states if s.serves(call, frames, key)), None)
    if state is not None:
        if state.reusable_at(policy, t, step):
            return state.additions
        states.remove(state)
        del state  # its additions are freed before the new ones are computed: one set in memory, not two
    additions = compute()
    states.insert(0, _Reusable(_latent_key(call), frames.clone(), call.context, call.y, key, t, t, step, step,
                               additions))
    del states[MAX_REUSE_STATES:]
    return additions
