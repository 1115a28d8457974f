"""Hugging Face Transformers: stream a `Trainer`'s logs into an AIDP / MLflow run.

    from aidp_metrics.integrations.transformers import AIDPCallback

    args = TrainingArguments(..., report_to="none")  # keep the built-in MLflowCallback out
    trainer = Trainer(model=model, args=args, train_dataset=ds, callbacks=[AIDPCallback()])
    trainer.train()

Every constructor argument is optional, so `callbacks=[AIDPCallback]` works too: the
endpoint comes from `AIDP_*` variables or `MLFLOW_TRACKING_URI`, the experiment from
`AIDP_EXPERIMENT_NAME` / `MLFLOW_EXPERIMENT_NAME`, and `AIDP_RUN_ID` / `MLFLOW_RUN_ID`
attach to an existing run.

What lands on the server:

- every numeric value the Trainer logs, under the Trainer's own key (`loss`, `grad_norm`,
  `learning_rate`, `epoch`, `eval_loss`, `train_runtime`, ...) at `state.global_step`
  (optimizer updates), so the run and `trainer.state.log_history` agree point for point;
  a value repeated at the same step (`epoch` in a training log and the evaluation log of
  the same step) is sent once;
- params as `MLflowCallback` logs them: the model config and `TrainingArguments.to_dict()`
  merged at the top level (the training arguments win), nested values flattened with "."
  only with `MLFLOW_FLATTEN_PARAMS`, at most `MLFLOW_MAX_LOG_PARAMS` of them;
  hyperparameter-search trial params under `trial/`;
- tags: `aidp_metrics.integration` ("transformers <version>"), `model_class` (and
  `trial_name` in a search), `MLFLOW_TAGS` (a JSON object), then `tags`.
- with `watch=` (or `AIDP_METRICS_WATCH`, as W&B's `WANDB_WATCH`): `grad_norm/<parameter>`,
  `grad_norm/total` and/or `weight_norm/<parameter>` every `watch_log_freq` updates
  (default `logging_steps`), at the same `state.global_step` (see the watch page).

Every variable `MLflowCallback` reads is read with its meaning: `MLFLOW_TRACKING_URI`,
`MLFLOW_EXPERIMENT_NAME`, `MLFLOW_RUN_ID`, `MLFLOW_TAGS`, `MLFLOW_NESTED_RUN` (with
`run=`: a run of its own nested under that run), `MLFLOW_FLATTEN_PARAMS`,
`MLFLOW_MAX_LOG_PARAMS`, `HF_MLFLOW_LOG_ARTIFACTS` (`log_artifacts`: at each `on_save`, on
world process zero, the saved `checkpoint-N/` folder, snapshotted in the call and uploaded
under `checkpoint-N/`, so the Trainer's rotation may delete it afterwards). With
`MLflowCallback` in the same `Trainer` (say `report_to="mlflow"`) every point would be
logged twice, into two runs: one warning says so.

Run lifecycle:

- `on_train_begin` (world process zero only) starts or attaches the run and sets the run's
  `status_on_exit` to FAILED; `on_train_end` ends it FINISHED. When an exception escapes
  `train()` the Trainer never calls `on_train_end`: the run is then ended FAILED by the
  run's exit hook (flushing what was logged first), or sooner, by the next `train()` call
  of the same callback (a notebook re-running a cell, the next trial of a search).
  There is no earlier reliable signal: wrapping `Trainer.train` is fragile, and an
  exception caught by the caller (e.g. in a notebook) leaves the run RUNNING until one of
  those two happens.
- Resume: the run id is saved in every checkpoint (`ExportableState`), and
  `trainer.train(resume_from_checkpoint=...)` attaches to that run; steps continue from
  the checkpoint's `global_step`, and a step the run already holds (the first job went
  on past the checkpoint) is not written twice: points at or below the last step the
  run holds for their key are skipped (`run.stats.skipped`, reported when the run ends).
  The choice of run is, first to last: the `run_id` argument, `AIDP_RUN_ID` /
  `MLFLOW_RUN_ID`, the checkpoint's run, a new run. A checkpoint saved while the server
  was unreachable holds the run's local id (`local-...`): the resumed job joins the run
  it became, or, until `aidp-metrics sync` has created it, keeps its points in the spool
  and the sync puts both jobs' points into that one run.
- `restore_callback_states_from_checkpoint=True`: the Trainer rebuilds the callback from
  the checkpoint (`state()`): the same arguments and run options, the same endpoint
  (never its credential: that, and a `client`'s auth, come from the environment again).
- `trainer.evaluate()` after `train()` logs into the same run (re-opened and ended again).
- Hyperparameter search: one run per trial, named after `state.trial_name` (the search's
  `hp_name`) or `trial-<n>`; a run id from the argument or the environment (or the run
  given as `run=`) becomes the trials' `mlflow.parentRunId` tag instead of being logged
  into.
- `AIDPCallback(run=run)` logs into a `Run` you started (with the params and tags above):
  it wins over `AIDP_RUN_ID` and a checkpoint's run, `on_train_end` only flushes it, and
  it stays RUNNING until you end it (also after a `train()` that raised). A callback the
  Trainer rebuilds from a checkpoint logs into the same run by id and leaves it open too.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from types import FrameType
from typing import TYPE_CHECKING, Any

import transformers
from transformers import TrainerCallback
from transformers.trainer_callback import CallbackHandler, ExportableState
from transformers.utils.generic import flatten_dict

from aidp_metrics._bridges.watch import check_watch_options
from aidp_metrics._env import AIDP_METRICS_WATCH, RUN_ID_VARIABLES, first_env
from aidp_metrics._notice import notice
from aidp_metrics._run.params import flatten_params, param_value
from aidp_metrics.integrations._base import (
    PARENT_RUN_TAG,
    RunHandle,
    RunSpec,
    parameter_names,
)
from aidp_metrics.integrations._checkpoint import (
    endpoint_from_state,
    endpoint_state,
    options_from_state,
    options_state,
)
from aidp_metrics.integrations._mlflow_env import (
    HF_MLFLOW_LOG_ARTIFACTS,
    MLFLOW_FLATTEN_PARAMS,
    MLFLOW_MAX_LOG_PARAMS,
    MLFLOW_NESTED_RUN,
    env_flag,
    env_int,
    env_tags,
)

if TYPE_CHECKING:
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from aidp_metrics import Endpoint, Run, TrackingClient

__all__ = ["AIDPCallback"]

TAG_MODEL_CLASS = "model_class"
TAG_TRIAL_NAME = "trial_name"


class AIDPCallback(TrainerCallback, ExportableState):
    """Send a `Trainer`'s metrics, params and run status to an AIDP / MLflow run.

    Args:
        experiment_name: experiment of a new run (default: `AIDP_EXPERIMENT_NAME`,
            `MLFLOW_EXPERIMENT_NAME`, then "Default").
        run_name: name of a new run (default: `TrainingArguments.run_name`).
        run_id: log into this existing run instead of starting one.
        tags: extra tags set on the run.
        log_params: log `TrainingArguments` and the model config as params.
        endpoint: where to send; by default from the environment.
        client: a `MetricsClient` to send with; by default one for `endpoint`.
        strict: raise when the run cannot be created (default: warn once and log nothing;
            training never dies from logging).
        run: a `Run` you started, to log into instead of opening one; the callback never
            ends it (`on_train_end` flushes it). Not with `experiment_name`, `run_name`,
            `run_id`, `endpoint`, `client` or run options: the run has its own.
        watch: "gradients", "parameters" or "all": log the model's per-parameter norms
            (`Run.watch`); default `AIDP_METRICS_WATCH`, else none.
        watch_log_freq: every how many optimizer updates (default: `logging_steps`).
        log_artifacts: upload each saved `checkpoint-N/` folder under `checkpoint-N/`
            (default: `HF_MLFLOW_LOG_ARTIFACTS`, as `MLflowCallback`).
        **run_options: forwarded to `aidp_metrics.Run` (`transport`, `flush_interval`, ...).
    """

    def __init__(
        self,
        *,
        experiment_name: str | None = None,
        run_name: str | None = None,
        run_id: str | None = None,
        tags: Mapping[str, str] | None = None,
        log_params: bool = True,
        endpoint: Endpoint | str | Mapping[str, Any] | None = None,
        client: TrackingClient | None = None,
        strict: bool = False,
        run: Run | None = None,
        watch: str | None = None,
        watch_log_freq: int | None = None,
        log_artifacts: bool | None = None,
        **run_options: Any,
    ) -> None:
        error = check_watch_options(watch or "all", watch_log_freq or 1)
        if error is not None:
            raise ValueError(f"{type(self).__name__}: watch: {error}")
        self._handle = RunHandle(
            type(self).__name__,
            kind="callback",
            run=run,
            endpoint=endpoint_from_state(endpoint),
            client=client,
            strict=strict,
            options=options_from_state(run_options),
            given={"experiment_name": experiment_name, "run_name": run_name, "run_id": run_id},
            integration=f"transformers {transformers.__version__}",
            accepted=parameter_names(AIDPCallback.__init__),
        )
        self.experiment_name = experiment_name
        self.run_name = run_name
        self.tags = {str(k): str(v) for k, v in (tags or {}).items()}
        self.log_params = log_params
        self.strict = strict
        self.watch = watch
        self.watch_log_freq = watch_log_freq
        self._log_artifacts = log_artifacts
        self._explicit_run_id = run_id
        # Set by the Trainer when it restores callback state from a checkpoint
        # (`restore_callback_states_from_checkpoint=True`); otherwise read from `state`.
        self._resume_run_id: str | None = None
        self._converter = self._handle.converter()
        self._in_train = False
        self._reopened = False
        self._trial_key: str | None = None
        self._trials_started = 0
        self._twin_checked = False

    @property
    def log_artifacts(self) -> bool:
        """Whether each saved `checkpoint-N/` is uploaded: `log_artifacts=` if given, else
        `HF_MLFLOW_LOG_ARTIFACTS`, as `MLflowCallback` reads it."""
        if self._log_artifacts is not None:
            return self._log_artifacts
        return bool(env_flag(HF_MLFLOW_LOG_ARTIFACTS))

    # -- public --------------------------------------------------------------------------

    @property
    def run_id(self) -> str | None:
        """The id of the current (or last) run, once one exists on world process zero."""
        return self._handle.run_id or self._explicit_run_id

    @property
    def run(self) -> Run | None:
        """The `aidp_metrics.Run` being logged to, on world process zero."""
        return self._handle.run

    @property
    def _user_run_id(self) -> str | None:
        """The run given as `run=` (the checkpoint's `attributes`): a rebuilt callback logs
        into it by id and, as the original, never ends it."""
        return self._handle.user_run_id

    @_user_run_id.setter
    def _user_run_id(self, run_id: str | None) -> None:
        if run_id:
            self._handle.borrow(run_id)

    def state(self) -> dict[str, Any]:
        """What the Trainer stores in checkpoints (JSON): every constructor argument it can
        rebuild the callback from (`restore_callback_states_from_checkpoint=True`), and the
        run id, to resume into it. Not stored: a `client` (a live object: its endpoint is
        stored instead) and any credential (a tracking URI's `user:password@` included):
        the rebuilt callback authenticates from the environment."""
        handle = self._handle
        endpoint = handle.endpoint
        if endpoint is None and handle.client is not None:
            endpoint = handle.client.endpoint
        attributes = {"_resume_run_id": self.run_id}
        if handle.user_run_id is not None:
            attributes["_user_run_id"] = handle.user_run_id
        return {
            "args": {
                "experiment_name": self.experiment_name,
                "run_name": self.run_name,
                "run_id": self._explicit_run_id,
                "tags": dict(self.tags),
                "log_params": self.log_params,
                "strict": self.strict,
                "watch": self.watch,
                "watch_log_freq": self.watch_log_freq,
                "log_artifacts": self._log_artifacts,
                "endpoint": endpoint_state(endpoint),
                **options_state(handle.options),
            },
            "attributes": attributes,
        }

    # -- Trainer events ------------------------------------------------------------------

    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: Any = None,
        **kwargs: Any,
    ) -> None:
        if not state.is_world_process_zero:
            return
        self._warn_if_mlflow_callback_too()
        trial_key = _trial_key(state)
        handle = self._handle
        run = handle.run
        if run is not None and not run.ended:
            if self._in_train:
                # The previous train() raised: on_train_end never came.
                handle.end("FAILED")
            elif trial_key != self._trial_key:
                handle.end("FINISHED")
        run = handle.run
        if run is None or run.ended:
            run = self._open(args, state, model)
        if run is None:
            return
        self._in_train = True
        self._reopened = False
        handle.set_exit_status("FAILED")
        self._watch(run, state, model)

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: Mapping[str, Any] | None = None,
        model: Any = None,
        **kwargs: Any,
    ) -> None:
        if not state.is_world_process_zero or not logs:
            return
        logs = _as_logged(logs, state)
        run = self._handle.run
        if not self._in_train and (run is None or run.ended):
            run = self._open_outside_training(args, state, model)
        if run is None:
            return
        step = int(state.global_step)
        # `epoch` is in the train and the eval logs of a step: logged once.
        keys, values = self._converter.points_at(logs, step)
        if keys:
            run.log_valid(keys, values, step)

    def on_evaluate(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> None:
        # Eval metrics are logged from on_log (same keys and steps as log_history).
        # A run re-opened for `trainer.evaluate()` after training is closed again here.
        if not state.is_world_process_zero or self._in_train or not self._reopened:
            return
        self._reopened = False
        run = self._handle.run
        if run is not None and not run.ended:
            self._handle.end("FINISHED")

    def on_save(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> None:
        """`log_artifacts`: the `checkpoint-N/` folder just saved, under `checkpoint-N/`. Its
        files are linked into the spool now (never rewritten: the next save is another
        folder), so the Trainer's rotation deleting it later loses nothing."""
        if not state.is_world_process_zero or not self.log_artifacts:
            return
        run = self._handle.run
        if run is None or run.ended:
            return
        with self._handle.guard("on_save"):
            name = f"checkpoint-{state.global_step}"
            folder = os.path.join(args.output_dir or "", name)
            if os.path.isdir(folder):
                run.log_artifacts(folder, name, snapshot="link")

    def on_train_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> None:
        if not state.is_world_process_zero:
            return
        self._in_train = False
        run = self._handle.run
        if run is not None:
            run.unwatch(kwargs.get("model"))  # a run of the user's stays open
        self._handle.end("FINISHED")

    # -- internals -----------------------------------------------------------------------

    def _watch(self, run: Run, state: TrainerState, model: Any) -> None:
        """Watch `model` when asked; its points land on the update's `global_step` (the
        hook runs before the Trainer counts the update)."""
        log = self.watch or _watch_from_env()
        if log is None or model is None:
            return
        freq = self.watch_log_freq or int(state.logging_steps or 0) or 100
        run.watch(model, log, freq, step=lambda: int(state.global_step) + 1)

    def _open(self, args: TrainingArguments, state: TrainerState, model: Any) -> Run | None:
        """Start or attach the run for this train() call (or trial) and log params/tags."""
        self._trial_key = _trial_key(state)
        search = bool(state.is_hyper_param_search)  # a new run per trial, under the given run
        run = self._handle.open(self._run_spec(args, state, model), separate=search)
        if run is None:
            return None
        if search:
            self._trials_started += 1
        self._resume_run_id = None
        if self.log_params:
            run.log_params(self._params(args, state, model))
        return run

    def _run_spec(self, args: TrainingArguments, state: TrainerState, model: Any) -> RunSpec:
        tags = self._tags(model)
        env_run_id = first_env(RUN_ID_VARIABLES)
        if state.is_hyper_param_search:
            parent = self._handle.user_run_id or self._explicit_run_id or env_run_id
            if parent:
                tags[PARENT_RUN_TAG] = parent
            if state.trial_name:
                tags[TAG_TRIAL_NAME] = str(state.trial_name)
            return RunSpec(
                experiment_name=self.experiment_name,
                run_name=self._trial_run_name(args, state),
                tags=tags,
                environment_run_id=False,
            )
        return RunSpec(
            run_id=self._explicit_run_id or env_run_id or self._checkpoint_run_id(state),
            experiment_name=self.experiment_name,
            run_name=self.run_name or args.run_name,
            tags=tags,
            nested=bool(env_flag(MLFLOW_NESTED_RUN)),
        )

    def _open_outside_training(
        self, args: TrainingArguments, state: TrainerState, model: Any
    ) -> Run | None:
        """`trainer.evaluate()` before or after train(): log into this callback's run."""
        if self._handle.run is None:
            run = self._open(args, state, model)
            # Stays open; ends FINISHED at exit or at the end of a train().
            self._handle.set_exit_status("FINISHED")
            return run
        # Logging into an ended run re-opens it (RUNNING); on_evaluate ends it again.
        self._reopened = True
        return self._handle.run

    def _checkpoint_run_id(self, state: TrainerState) -> str | None:
        """The run id saved in the checkpoint being resumed from, if any."""
        if self._resume_run_id:
            return self._resume_run_id
        if not state.global_step:  # a fresh start: stateful_callbacks holds our own state
            return None
        stored: Any = state.stateful_callbacks  # a dict once loaded from a checkpoint
        saved = stored.get(type(self).__name__) if isinstance(stored, Mapping) else None
        entries = saved if isinstance(saved, list) else [saved]
        for entry in entries:
            if isinstance(entry, Mapping):
                run_id = (entry.get("attributes") or {}).get("_resume_run_id")
                if isinstance(run_id, str) and run_id:
                    return run_id
        return None

    def _trial_run_name(self, args: TrainingArguments, state: TrainerState) -> str:
        if state.trial_name:
            return str(state.trial_name)
        base = self.run_name or args.run_name
        name = f"trial-{self._trials_started}"
        return f"{base}-{name}" if base else name

    def _tags(self, model: Any) -> dict[str, str]:
        tags: dict[str, str] = {}
        if model is not None:
            tags[TAG_MODEL_CLASS] = _qualified_name(type(model))
        tags.update(env_tags() or {})
        tags.update(self.tags)
        return tags

    def _params(self, args: TrainingArguments, state: TrainerState, model: Any) -> dict[str, str]:
        """`MLflowCallback`'s params: `{**model.config.to_dict(), **args.to_dict()}`."""
        combined: dict[str, Any] = {}
        config = getattr(model, "config", None)
        if config is not None:
            try:
                to_dict = getattr(config, "to_dict", None)
                combined.update(to_dict() if callable(to_dict) else config)
            except Exception as exc:
                _warn_params("the model config", exc)
        try:
            combined.update(args.to_dict())  # type: ignore[no-untyped-call]
        except Exception as exc:  # a custom TrainingArguments subclass that cannot be read
            _warn_params("TrainingArguments", exc)
        if env_flag(MLFLOW_FLATTEN_PARAMS):
            combined = flatten_dict(combined, delimiter=".")
        items = list(combined.items())
        most = env_int(MLFLOW_MAX_LOG_PARAMS)
        if most is not None:
            items = items[:most]
        params = {str(key): param_value(value) for key, value in items}
        if state.trial_params:
            params.update(flatten_params({"trial": dict(state.trial_params)}))
        return params

    def _warn_if_mlflow_callback_too(self) -> None:
        """One warning when transformers' own `MLflowCallback` is in the same `Trainer`."""
        if self._twin_checked:
            return
        self._twin_checked = True
        handler = _calling_handler()
        if handler is None:
            return
        from transformers.integrations.integration_utils import MLflowCallback

        if any(isinstance(callback, MLflowCallback) for callback in handler.callbacks):
            self._handle.warn_once(
                "MLflowCallback",
                "transformers' MLflowCallback is active in this Trainer too (report_to "
                "includes 'mlflow' by default or by name): every point is logged twice, into "
                "two runs. Pass report_to='none' (or remove MLflowCallback) to keep one.",
            )


def _calling_handler() -> CallbackHandler | None:
    """The `CallbackHandler` calling this event: the Trainer gives callbacks no handle on
    the other callbacks, and its `call_event` is a few frames up."""
    frame: FrameType | None = sys._getframe(2)
    for _ in range(4):
        if frame is None:
            return None
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, CallbackHandler):
            return candidate
        frame = frame.f_back
    return None


def _as_logged(logs: Mapping[str, Any], state: TrainerState) -> Mapping[str, Any]:
    """`logs`, or a copy with what the callbacks before this one removed put back.

    The Trainer passes one dict to every callback in turn, and `PrinterCallback` (added
    with `disable_tqdm=True`) pops `total_flos` from it; a callback rebuilt from a
    checkpoint comes after it. `Trainer.log` appends a copy to `log_history` first: when
    that entry is this log (same step, the values both hold agree), its keys are added
    back, so the run holds what `log_history` holds. Keys a callback added are kept.
    """
    history = state.log_history
    entry = history[-1] if history else None
    if type(entry) is not dict and not isinstance(entry, Mapping):
        return logs
    if entry.get("step") != state.global_step:
        return logs
    missing = entry.keys() - logs.keys()
    missing.discard("step")
    if not missing:
        return logs  # nothing to put back (the usual case: no callback removed a key)
    shared = [key for key in logs if key in entry]
    if not shared or any(not _equal(entry[key], logs[key]) for key in shared):
        return logs
    return {**{k: v for k, v in entry.items() if k != "step"}, **logs}


def _watch_from_env() -> str | None:
    value = first_env((AIDP_METRICS_WATCH,))
    if value is None or value.lower() in ("false", "0", "no", "off", "none"):
        return None
    if check_watch_options(value.lower(), 1) is not None:
        notice(
            f"aidp-metrics: {AIDP_METRICS_WATCH}={value!r} is not gradients, parameters, all "
            "or false: not watching the model"
        )
        return None
    return value.lower()


def _equal(a: Any, b: Any) -> bool:
    try:
        return a is b or bool(a == b)
    except Exception:  # an array's == is not a bool
        return False


def _trial_key(state: TrainerState) -> str | None:
    if not state.is_hyper_param_search:
        return None
    params = json.dumps(state.trial_params or {}, sort_keys=True, default=str)
    return f"{state.trial_name}|{params}"


def _qualified_name(kind: type) -> str:
    module = kind.__module__
    return (
        kind.__qualname__ if module in ("builtins", "__main__") else f"{module}.{kind.__qualname__}"
    )


def _warn_params(what: str, exc: Exception) -> None:
    notice(
        f"aidp-metrics: not logging {what} as params ({type(exc).__name__}: {exc})",
        stacklevel=4,
    )
