"""`RunHandle`: the one object every integration logs through.

A framework module (lightning, transformers, keras, accelerate) only translates the
framework's events into calls on its handle. The handle owns what they share:

- **Options**, checked when the integration is constructed: a misspelt one is a
  `TypeError` naming it and the closest valid name, not a silent no-logging run.
- **The run**, opened lazily on the logging process (`is_main`): attached when continuing
  one (`run_id=`, `AIDP_RUN_ID` / `MLFLOW_RUN_ID`, a resumed checkpoint) with
  `skip_logged_steps`, so a resumed job does not write a step twice; else started.
- **A run the user started** (`run=`): logged into, never opened, ended or given an exit
  status -- the user owns its lifetime. Where the framework says training is over the
  handle only flushes it. A copy of the integration in another process (pickled for
  `ddp_spawn`, rebuilt from a checkpoint) logs into the same run by id, and leaves it open
  too.
- **Failure**: a run the server refuses (401, 403, 404 for the run, a broken
  configuration) costs no point: one notice, and the run goes on offline, its points in
  the spool for `aidp-metrics sync` (`strict=True` raises instead). Anything else that
  breaks opening: one notice, and the integration does nothing more in this process. A
  framework hook that fails: one notice per hook. Training never sees an exception unless
  `strict=True`.
- **The exit status** of a run it opened: FAILED while it is open (a crash, or an exit
  without the framework's end hook), then the status the end hook gave.
- **Repeats**: its converters forget what they sent when a new run opens.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aidp_metrics._errors import AIDPError
from aidp_metrics._notice import Notices, notice
from aidp_metrics._queue.options import DeliveryOptions, check_option_names
from aidp_metrics.integrations._convert import MetricConverter

if TYPE_CHECKING:
    from aidp_metrics import Endpoint, Run, TrackingClient

__all__ = [
    "INTEGRATION_TAG",
    "NOTE_TAG",
    "PARENT_RUN_TAG",
    "RUN_OPTIONS",
    "RunHandle",
    "RunSpec",
    "open_run",
    "parameter_names",
]

RUN_OPTIONS = DeliveryOptions.names() | {"client"}  # a TrackingClient to send with
# The one tag naming the integration that logged a run: "<framework> <framework version>".
INTEGRATION_TAG = "aidp_metrics.integration"
NOTE_TAG = "mlflow.note.content"  # MLflow's run description
PARENT_RUN_TAG = "mlflow.parentRunId"


def parameter_names(function: Callable[..., Any]) -> frozenset[str]:
    """The named parameters of an integration's constructor (not self, not **kwargs): with
    the run options, every name a misspelt one is matched against."""
    return frozenset(
        name
        for name, parameter in inspect.signature(function).parameters.items()
        if name != "self" and parameter.kind is not inspect.Parameter.VAR_KEYWORD
    )


@dataclass(frozen=True)
class RunSpec:
    """What a run the handle opens is opened with; the integration builds it from its
    arguments and the framework's state, only when a run is about to be opened."""

    run_id: str | None = None
    experiment_name: str | None = None
    run_name: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    environment_run_id: bool = True  # False: never attach to AIDP_RUN_ID (a search trial)
    # With a user's run (`run=`): a run of its own under it (`mlflow.parentRunId`), as
    # MLflow's `start_run(nested=True)` inside an active run. Without one: no effect.
    nested: bool = False


SpecSource = RunSpec | Callable[[], RunSpec]


class RunHandle:
    """The run an integration logs into, and everything around it that every integration
    does the same way.

    Args:
        owner: the integration's class name (in messages and the misspelt-option error).
        kind: what the user calls it ("logger", "callback", "tracker").
        run: a `Run` the user started: logged into, never ended (flushed at the end).
        endpoint, client: where a run the handle opens sends (default: the environment).
        strict: raise instead of warning (opening, and every guarded hook).
        options: `Run` options (`flush_interval`, ...; `client` may be one of them).
        given: the integration's other run-opening arguments, by name: with `run=` they
            have nothing to apply to, and one that is set is a `ValueError`.
        is_main: whether this process logs (rank zero); None: every process does.
        integration: the `INTEGRATION_TAG` value every run it logs into gets.
        accepted: the integration's own parameter names (`parameter_names`): a misspelt
            option is matched against them and the run options alike.
    """

    def __init__(
        self,
        owner: str,
        *,
        kind: str,
        run: Run | None = None,
        endpoint: Endpoint | str | None = None,
        client: TrackingClient | None = None,
        strict: bool = False,
        options: Mapping[str, Any] | None = None,
        given: Mapping[str, object] | None = None,
        is_main: Callable[[], bool] | None = None,
        integration: str | None = None,
        accepted: Iterable[str] = (),
    ) -> None:
        options = dict(options or {})
        unknown = set(options) - RUN_OPTIONS
        if unknown:
            check_option_names(unknown, RUN_OPTIONS | set(accepted), owner)
        client = options.pop("client", None) or client
        if run is not None:
            _check_user_run(owner, run, {**(given or {}), "endpoint": endpoint, "client": client})
            if options:
                _conflict(owner, sorted(options))
        self.kind = kind
        self.strict = strict
        self._endpoint = endpoint
        self._client = client
        self._options = options
        self._is_main = is_main
        self._user_run = run
        self._borrowed = run is not None  # the user's run: never ended here
        self._resume_id: str | None = None  # a run to log into again (another process)
        self._run: Run | None = None  # the run logged into now
        self._owned = False  # `_run` was opened here (and so is ended here)
        self._last_id: str | None = None
        self._final: str | None = None  # the status `end` last gave an owned run
        self._disabled = False
        self._converters: list[MetricConverter] = []
        self._integration = integration
        self.notices = Notices()

    # -- what the integration reads ------------------------------------------------------

    @property
    def run(self) -> Run | None:
        """The run being logged into, once the logging process has begun to use it."""
        return self._run

    @property
    def run_id(self) -> str | None:
        """The id of the run logged into; else of the last one, or the one to log into."""
        run = self._run or self._user_run
        if run is not None:
            run_id: str = run.run_id
            return run_id
        return self._resume_id or self._last_id

    @property
    def user_owned(self) -> bool:
        """The run is the user's (`run=`): the integration does not end it."""
        return self._borrowed

    @property
    def user_run_id(self) -> str | None:
        """The id of the user's run (`run=`), if there is one."""
        if self._user_run is not None:
            run_id: str = self._user_run.run_id
            return run_id
        return self._resume_id if self._borrowed else None

    @property
    def final_status(self) -> str | None:
        """The status `end` last gave the run this handle opened."""
        return self._final

    @property
    def endpoint(self) -> Endpoint | str | None:
        return self._endpoint

    @property
    def client(self) -> TrackingClient | None:
        return self._client

    @property
    def options(self) -> dict[str, Any]:
        """The `Run` options a run the handle opens gets (a copy)."""
        return dict(self._options)

    def converter(
        self, prefix: str = "", separator: str = "-", *, nested: bool = False
    ) -> MetricConverter:
        """A converter whose repeat rule starts over with every new run."""
        converter = MetricConverter(prefix=prefix, separator=separator, nested=nested)
        self._converters.append(converter)
        return converter

    # -- the run -------------------------------------------------------------------------

    def get(self, spec: SpecSource) -> Run | None:
        """The run to log into, opened on first use (`spec` is only read then). An ended
        run is returned as it is: logging into it reopens it. In a forked child (ddp_fork)
        the logging process takes an inherited run over. None on a process that does not
        log, and once opening has failed."""
        run = self._run
        if run is None:
            return self._open(spec, separate=False)
        if run.inherited:
            run.take_over()
        return run

    def open(self, spec: SpecSource, *, separate: bool = False) -> Run | None:
        """A new run in place of the current one (a new `train()`): the user's run again
        when there is one, unless `separate` (a hyperparameter-search trial: a run of its
        own, opened and ended here)."""
        if self._run is not None:
            self._last_id = self._run.run_id
            self._run = None
        self._final = None
        return self._open(spec, separate=separate)

    def borrow(self, run_id: str) -> None:
        """Log into the user's run `run_id` (the copy of an integration given `run=`,
        rebuilt in another process): attached when needed, never ended here."""
        self._borrowed = True
        self._resume_id = run_id

    def _open(self, spec: SpecSource, *, separate: bool) -> Run | None:
        if self._disabled or (self._is_main is not None and not self._is_main()):
            return None
        wanted = spec() if callable(spec) else spec
        if self._integration is not None:
            wanted = dataclasses.replace(
                wanted, tags={INTEGRATION_TAG: self._integration, **wanted.tags}
            )
        if wanted.nested and self._user_run is not None and not separate:
            separate = True
            tags = {**wanted.tags, PARENT_RUN_TAG: self._user_run.run_id}
            wanted = dataclasses.replace(wanted, tags=tags, environment_run_id=False)
        user_run = None if separate else self._user_run
        if user_run is not None:
            if user_run.inherited:
                user_run.take_over()
            if wanted.tags:
                user_run.set_tags(wanted.tags)
            return self._use(user_run, owned=False)
        borrowed = self._borrowed and not separate
        target = None if separate else self._resume_id
        client, experiment_id = self._client, None
        if self._user_run is not None and not wanted.experiment_name:
            # A run of its own beside the user's (a search trial): same server, same
            # experiment.
            client = client or self._user_run.client
            experiment_id = self._user_run.experiment_id
        try:
            run = open_run(
                run_id=target or wanted.run_id,
                experiment_name=wanted.experiment_name,
                experiment_id=experiment_id,
                run_name=wanted.run_name,
                tags=wanted.tags or None,
                endpoint=self._endpoint,
                client=client,
                strict=self.strict,
                environment_run_id=wanted.environment_run_id,
                **self._options,
            )
        except Exception as exc:
            if self.strict:
                raise
            self._disabled = True
            self.notices.once(
                "open",
                f"aidp-metrics: the {self.kind} failed ({type(exc).__name__}: {exc}); "
                "training goes on without it",
            )
            return None
        if not self._borrowed:
            self._resume_id = None
        if not borrowed:
            # Training may be in progress: a crash, or an exit without the framework's end
            # hook, ends the run FAILED, never FINISHED. `end` sets the real status.
            run.status_on_exit = self._final or "FAILED"
        return self._use(run, owned=not borrowed)

    def _use(self, run: Run, *, owned: bool) -> Run:
        self._run, self._owned = run, owned
        self._last_id = run.run_id
        for converter in self._converters:
            converter.forget_repeats()
        return run

    # -- the run's status ----------------------------------------------------------------

    def set_exit_status(self, status: str) -> None:
        """The status a run the handle opened gets if the process exits now: FAILED while
        training (or a standalone evaluation) is in progress. The user's run: untouched."""
        if self._run is not None and self._owned:
            self._run.status_on_exit = status

    def end(self, status: str = "FINISHED") -> None:
        """Training is over: a run the handle opened is ended with `status` (flushing first,
        up to its `end_timeout`), and keeps it as its exit status; logging afterwards reopens
        it. The user's run is only flushed (same bound): it stays open for its owner."""
        run = self._run
        if run is None:
            return
        if not self._owned:
            run.flush(run.options.end_timeout)
            return
        previous, self._final = self._final, status
        run.status_on_exit = status
        if not run.ended or status != previous:
            run.end(status)

    def flush(self) -> None:
        """Deliver what was logged (up to the run's `end_timeout`), whoever owns the run."""
        run = self._run
        if run is not None:
            run.flush(run.options.end_timeout)

    # -- failures ------------------------------------------------------------------------

    def failed(self, hook: str, exc: Exception) -> None:
        """A framework hook failed: raise with `strict`, else one notice per hook."""
        if self.strict:
            raise exc
        self.notices.once(
            hook, f"aidp-metrics: {hook} failed ({type(exc).__name__}: {exc}); training goes on"
        )

    @contextlib.contextmanager
    def guard(self, hook: str) -> Iterator[None]:
        """Run a hook's body so that a failure in it never reaches training (`failed`)."""
        try:
            yield
        except Exception as exc:
            self.failed(hook, exc)

    def warn_once(self, topic: str, message: str) -> None:
        self.notices.once(topic, f"aidp-metrics: {message}")

    # -- pickling (ddp_spawn, a deep copy) -----------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        run = self._run or self._user_run
        if run is not None:
            state["_resume_id"] = run.run_id  # the copy logs into the same run
        # Threads, connections and locks stay in this process.
        state.update(_run=None, _user_run=None, _client=None, _owned=False, notices=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.notices = Notices()

    def __repr__(self) -> str:
        whose = "user's" if self._borrowed else "own"
        return f"RunHandle({self.kind}, run_id={self.run_id!r}, {whose})"


def _check_user_run(owner: str, run: object, given: Mapping[str, object]) -> None:
    from aidp_metrics import Run

    if not isinstance(run, Run):
        raise TypeError(
            f"{owner}(run=...) takes an aidp_metrics.Run, got {type(run).__name__}: "
            "pass run_id= to log into a run by its id"
        )
    set_ = sorted(name for name, value in given.items() if value is not None and value != {})
    if set_:
        _conflict(owner, set_)


def _conflict(owner: str, names: Iterable[str]) -> None:
    listed = ", ".join(f"{name}=" for name in names)
    raise ValueError(
        f"{owner}: {listed} cannot apply to the run given as run= (it was opened with its "
        "own id, experiment, name, endpoint and options); pass either run= or those"
    )


def open_run(
    *,
    run_id: str | None = None,
    experiment_name: str | None = None,
    experiment_id: str | None = None,
    run_name: str | None = None,
    tags: Mapping[str, object] | None = None,
    endpoint: Endpoint | str | None = None,
    client: TrackingClient | None = None,
    strict: bool = False,
    environment_run_id: bool = True,
    **options: Any,
) -> Run:
    """Attach to `run_id` (or, with `environment_run_id`, the environment's run id) with
    `skip_logged_steps`, else start a run (in `experiment_id` when given). A refusal gives
    one notice and returns an offline run that keeps every point in the spool (`strict`:
    raises)."""
    from aidp_metrics import Run
    from aidp_metrics._env import EXPERIMENT_VARIABLES, RUN_ID_VARIABLES, first_env

    target = run_id or (first_env(RUN_ID_VARIABLES) if environment_run_id else None)
    if experiment_id is None:
        experiment_name = experiment_name or first_env(EXPERIMENT_VARIABLES)
    options["strict"] = strict
    try:
        if target is not None:
            run = Run.attach(
                target,
                endpoint=endpoint,
                client=client,
                skip_logged_steps=True,
                experiment_name=experiment_name,
                **options,
            )
            if tags:
                run.set_tags(tags)
            return run
        return Run.start(
            experiment_name=experiment_name,
            experiment_id=experiment_id,
            run_name=run_name,
            tags=tags,
            endpoint=endpoint,
            client=client,
            **options,
        )
    except AIDPError as exc:
        if strict:
            raise
        notice(
            f"aidp-metrics: could not start or attach the run ({exc}); training goes on and "
            "its points are kept in the spool: deliver them with `aidp-metrics sync` once "
            "this is fixed",
            stacklevel=4,
        )
    if target is not None:
        run = Run.attach(target, offline=True, experiment_name=experiment_name, **options)
        if tags:
            run.set_tags(tags)
        return run
    return Run.start(
        experiment_name=experiment_name,
        experiment_id=experiment_id,
        run_name=run_name,
        tags=tags,
        offline=True,
        **options,
    )
