"""`Run.watch`: per-parameter gradient and weight norms of a torch model.

At every `log_freq`-th optimizer update the watcher logs, at that update's step,
`grad_norm/<parameter>` and `grad_norm/total` (2-norms of the gradients the optimizer is
about to apply) and/or `weight_norm/<parameter>`. It hooks torch's global optimizer step
pre-hook, so it needs no optimizer and sees every framework's update (a plain loop,
Accelerate's and Transformers' wrapped optimizers, Lightning's):

- a step called without a closure has its gradients final when the hook runs: after
  accumulation, after any clipping done before `optimizer.step()`, unscaled by a
  `GradScaler` (which unscales before it calls the step, and skips the call, so the
  watcher too, when it found an inf);
- a step called with a closure (Lightning's automatic optimization, LBFGS) computes them
  inside it: the hook wraps the closure and reads the norms when its first call returns,
  which in Lightning is after `on_before_optimizer_step` and its gradient clipping.

Non-logging updates cost a counter test; a logging update computes every norm with
torch's fused multi-tensor norm and moves them to the host in one transfer. Nothing is
stored on the model (it stays picklable); `remove` takes the hook away. This module is
light: torch is imported by the first `watch`.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from aidp_metrics._metric import sanitize_key
from aidp_metrics._notice import Notices, notice

if TYPE_CHECKING:
    import torch

LOG_CHOICES = ("gradients", "parameters", "all")
_WRAPPERS = ("DistributedDataParallel", "DataParallel", "OptimizedModule")  # unwrapped

__all__ = ["LOG_CHOICES", "NormSink", "Watches", "check_watch_options"]


class _Options(Protocol):
    @property
    def strict(self) -> bool: ...


class NormSink(Protocol):
    """What the watcher needs from a run (`Run`, which sits above this stage)."""

    @property
    def options(self) -> _Options: ...

    def log_valid(self, keys: list[str], values: list[float], step: int) -> None: ...


def check_watch_options(log: object, log_freq: object) -> str | None:
    """Why `log` / `log_freq` cannot be watched with, or None when they can."""
    if log not in LOG_CHOICES:
        return f"log must be one of {', '.join(map(repr, LOG_CHOICES))}, got {log!r}"
    if type(log_freq) is not int or log_freq < 1:
        return f"log_freq must be a positive int, got {log_freq!r}"
    return None


class Watches:
    """The models one run watches; the run owns one."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watches: list[_Watch] = []

    def add(
        self,
        run: NormSink,
        model: object,
        log: str,
        log_freq: int,
        step: Callable[[], int] | None,
        first_step: int,
    ) -> None:
        """Watch `model` (instead of how it was watched before). Bad arguments: one notice,
        nothing watched (raised with `strict=True`)."""
        try:
            error = check_watch_options(log, log_freq)
            if error is not None:
                raise ValueError(error)
            watch = _Watch(run, model, log, log_freq, step, first_step)
        except (ImportError, TypeError, ValueError) as exc:
            if run.options.strict:
                raise
            notice(f"aidp-metrics: not watching the model: {exc}", stacklevel=4)
            return
        self.remove(model)
        if watch.active:
            with self._lock:
                self._watches.append(watch)

    def remove(self, model: object = None) -> None:
        """Stop watching `model`, or every model when None."""
        with self._lock:
            gone = [w for w in self._watches if model is None or w.watches(model)]
            self._watches = [w for w in self._watches if w not in gone]
        for watch in gone:
            watch.remove()


class _Watch:
    """The hook and the norm computation for one model."""

    def __init__(
        self,
        run: NormSink,
        model: object,
        log: str,
        log_freq: int,
        step: Callable[[], int] | None,
        first_step: int,
    ) -> None:
        import torch

        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"watch needs a torch.nn.Module, got {type(model).__name__}")
        self._torch = torch
        self._run = run
        self._model = model
        self._freq = log_freq
        self._step = step
        self._first = first_step
        self._updates = 0  # the watcher's own count, when the caller gives no step
        self._gradients = log in ("gradients", "all")
        self._weights = log in ("parameters", "all")
        self._notices = Notices()
        # optimizer -> it steps a watched parameter (weak: an id could be reused)
        self._owners: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()
        names, params = _watched_parameters(_unwrapped(model), self._notices)
        self._params = params
        self._ids = {id(p) for p in params}
        self._grad_keys = {n: sanitize_key(f"grad_norm/{n}") for n in names}
        self._weight_keys = [sanitize_key(f"weight_norm/{n}") for n in names]
        self._names = names
        self._handle: Any = None
        if _is_other_rank(torch):
            return  # under DDP the rank-zero process logs (gradients are all-reduced)
        from torch.optim.optimizer import register_optimizer_step_pre_hook

        self._handle = register_optimizer_step_pre_hook(self._before_step)

    @property
    def active(self) -> bool:
        return self._handle is not None

    def watches(self, model: object) -> bool:
        return self._model is model

    def remove(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            handle.remove()

    def _before_step(
        self, optimizer: torch.optim.Optimizer, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        try:
            return self._on_update(optimizer, args, kwargs)
        except Exception as exc:  # nothing reaches the training loop unless strict
            if self._run.options.strict:
                raise
            self._notices.once("hook", f"aidp-metrics: watch: update not logged: {exc!r}")
            return None

    def _on_update(
        self, optimizer: torch.optim.Optimizer, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        owned = self._owners.get(optimizer)
        if owned is None:
            owned = self._owners[optimizer] = self._owns(optimizer)
        if not owned:
            return None
        self._updates += 1
        step = self._updates if self._step is None else self._framework_step()
        if (step - self._first + 1) % self._freq:
            return None
        closure = kwargs.get("closure")
        if closure is None and len(args) > 1 and callable(args[1]):  # (optimizer, closure)
            closure, args = args[1], (args[0], *args[2:])
        if closure is None:
            self._log(step)
            return None
        return args, {**kwargs, "closure": self._after(closure, step)}

    def _framework_step(self) -> int:
        assert self._step is not None
        try:
            return self._step()
        except Exception as exc:  # e.g. a LightningModule not attached to a Trainer
            self._notices.once(
                "step",
                f"aidp-metrics: watch: the framework's step is unknown ({exc}); "
                "counting optimizer updates from 1 instead",
            )
            return self._updates

    def _after(self, closure: Callable[[], Any], step: int) -> Callable[[], Any]:
        done = False

        def closure_then_log() -> Any:
            nonlocal done
            result = closure()
            if not done:
                done = True
                self._log(step)
            return result

        return closure_then_log

    def _owns(self, optimizer: torch.optim.Optimizer) -> bool:
        ids = self._ids
        return any(id(p) in ids for group in optimizer.param_groups for p in group["params"])

    def _log(self, step: int) -> None:
        try:
            keys, values = self._norms()
        except Exception as exc:  # a backend without a fused norm, a broken tensor, ...
            if self._run.options.strict:
                raise
            self._notices.once("norms", f"aidp-metrics: watch: norms not logged: {exc!r}")
            return
        if keys:
            self._run.log_valid(keys, values, step)

    def _norms(self) -> tuple[list[str], list[float]]:
        """Every norm of this update, moved to the host in one transfer."""
        torch = self._torch
        keys: list[str] = []
        parts: list[Any] = []
        with torch.no_grad():
            if self._gradients:
                names, grads = self._present_gradients()
                if grads:
                    norms = _fused_norms(torch, grads)
                    keys += [self._grad_keys[n] for n in names] + ["grad_norm/total"]
                    parts += [norms, torch.linalg.vector_norm(norms).reshape(1)]
            if self._weights:
                keys += self._weight_keys
                parts.append(_fused_norms(torch, [p.detach() for p in self._params]))
            if not parts:
                return [], []
            values: list[float] = torch.cat([p.to(parts[0].device) for p in parts]).tolist()
        return keys, values

    def _present_gradients(self) -> tuple[list[str], list[torch.Tensor]]:
        names: list[str] = []
        grads: list[torch.Tensor] = []
        for name, grad in zip(self._names, [p.grad for p in self._params], strict=True):
            if grad is None:
                continue  # frozen, or not used in this update
            names.append(name)
            grads.append(grad.coalesce()._values() if grad.is_sparse else grad)
        return names, grads


def _fused_norms(torch: Any, tensors: list[Any]) -> Any:
    """The 2-norm of each tensor, in float32, as one tensor on the first one's device:
    one fused kernel per device (as `clip_grad_norm_`). Tensors on several devices (model
    parallel) are the exception: found by `stack` refusing them, not looked for each step."""
    norms = torch._foreach_norm(tensors, 2, dtype=torch.float32)
    try:
        return torch.stack(norms)
    except RuntimeError:  # on more than one device
        first = tensors[0].device
        return torch.stack([norm.to(first) for norm in norms])


def _unwrapped(model: Any) -> Any:
    """The module under DDP / DataParallel / `torch.compile`: the same parameter names
    with and without the wrapper."""
    while type(model).__name__ in _WRAPPERS:
        model = getattr(model, "module", None) or getattr(model, "_orig_mod", None) or model
        if type(model).__name__ not in _WRAPPERS:
            break
    return model


def _watched_parameters(model: Any, notices: Notices) -> tuple[list[str], list[Any]]:
    """The model's parameters by name, less sharded ones (said once)."""
    names: list[str] = []
    params: list[Any] = []
    sharded: list[str] = []
    for name, p in model.named_parameters():
        if _is_sharded(p):
            sharded.append(name)
        else:
            names.append(name)
            params.append(p)
    if sharded:
        shown = ", ".join(sharded[:3]) + (", ..." if len(sharded) > 3 else "")
        notices.once(
            "sharded",
            f"aidp-metrics: watch: {len(sharded)} sharded parameter(s) ({shown}) are not "
            "logged: under FSDP / DeepSpeed ZeRO each rank holds only a shard of them and "
            "its gradients, so no rank alone knows their norms. Logged: the "
            f"{len(names)} parameter(s) that are not sharded; grad_norm/total covers those.",
        )
    return names, params


def _is_sharded(p: Any) -> bool:
    return (
        type(p).__name__ == "DTensor"  # FSDP2
        or bool(getattr(p, "_is_flat_param", False))  # FSDP1
        or hasattr(p, "ds_id")  # DeepSpeed ZeRO-3
    )


def _is_other_rank(torch: Any) -> bool:
    dist = torch.distributed
    return bool(dist.is_available() and dist.is_initialized() and dist.get_rank() != 0)
