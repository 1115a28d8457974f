"""What a new `Run` starts from: its client, options, identity and opening op.

`Run.start` and `Run.attach` make one attempt at opening the run on the caller's thread
(through the `RunOpener`); if the server does not answer, the run starts without waiting
and its opening op (create / attach) is queued for the delivery loop to carry out with the
same opener. Only a definite refusal (400, 401, 403, 404) raises.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aidp_metrics._connection.client import MAX_TAG_VALUE_LENGTH, TrackingClient
from aidp_metrics._connection.connect import connect
from aidp_metrics._connection.endpoint import Endpoint
from aidp_metrics._delivery.opener import Opened, RunOpener
from aidp_metrics._env import AIDP_METRICS_MODE
from aidp_metrics._errors import APIError, NoEndpointConfigured
from aidp_metrics._metric import now_ms, sanitize_key
from aidp_metrics._notice import Notices
from aidp_metrics._queue.journal import RunDescriptor, new_local_id, run_id_for, spool_root
from aidp_metrics._queue.options import DeliveryOptions
from aidp_metrics._version import __version__

from .source import source_tags

RUN_NAME_TAG = "mlflow.runName"
# Answers that are definite: the run cannot be created or found, whatever we wait.
_DEFINITE_STATUSES = frozenset({400, 401, 403, 404})
_T = TypeVar("_T")
_R = TypeVar("_R", bound="RunConstructors")

# Said once per process: the same misconfiguration is not news for the second run.
process_notices = Notices()


@dataclass
class RunSetup:
    """Everything a `Run` is built from."""

    client: TrackingClient | None
    owns_client: bool
    options: DeliveryOptions
    descriptor: RunDescriptor
    opening: tuple[str, dict[str, Any]] | None  # None: the server has the run already
    params: dict[str, str] = field(default_factory=dict)
    floors: dict[str, int] = field(default_factory=dict)
    alias: str | None = None  # attached to a local id not resolved yet
    spec: dict[str, Any] | None = None  # the create op's spec (a forked child may need it)

    @property
    def run_id(self) -> str | None:
        return self.descriptor.run_id if self.opening is None else None


def start_setup(
    *,
    experiment_name: str | None,
    run_name: str | None,
    tags: Mapping[str, object] | None,
    endpoint: Endpoint | str | None,
    client: TrackingClient | None,
    experiment_id: str | None,
    offline: bool,
    options: dict[str, Any],
) -> RunSetup:
    delivery = DeliveryOptions.from_kwargs(options)
    all_tags = {**default_tags(), **string_tags(tags or {})}
    if run_name:
        all_tags.pop(RUN_NAME_TAG, None)  # run_name wins, as in MLflow's own loggers
    spec: dict[str, Any] = {
        "experiment_name": experiment_name or ("Default" if experiment_id is None else None),
        "experiment_id": experiment_id,
        "run_name": run_name,
        "tags": all_tags,
        "start_time": now_ms(),
    }
    live, owns = (None, False) if offline else client_or_offline(endpoint, client)
    descriptor = RunDescriptor(
        local_id=new_local_id(),
        endpoint=live.endpoint.public_url() if live is not None else None,
        experiment_name=spec["experiment_name"],
        experiment_id=experiment_id,
        run_name=run_name,
    )
    setup = RunSetup(live, owns, delivery, descriptor, ("create", spec), spec=spec)
    if live is not None:
        opener = RunOpener(live, spool_root(delivery.spool_dir))
        later = "the run starts locally and is created on the server as soon as it answers"
        opened = answer_now(setup, lambda: opener.create(spec, descriptor.local_id), later)
        if opened is not None:
            spec["experiment_id"] = opened.experiment_id
            _opened(setup, opened)
    return setup


def attach_setup(
    run_id: str,
    *,
    endpoint: Endpoint | str | None,
    client: TrackingClient | None,
    skip_logged_steps: bool,
    experiment_name: str | None,
    offline: bool,
    options: dict[str, Any],
) -> RunSetup:
    delivery = DeliveryOptions.from_kwargs(options)
    live, owns = (None, False) if offline else client_or_offline(endpoint, client)
    root = spool_root(delivery.spool_dir)
    opener = RunOpener(live, root) if live is not None else None
    target: dict[str, Any] = {"run_id": run_id}
    alias: str | None = None
    known = run_id_for(run_id, root) if run_id.startswith("local-") else None
    if known is not None:  # this spool directory remembers what the local id became
        run_id, target = known, {"run_id": known}
    elif run_id.startswith("local-"):
        alias = run_id
        target = {"local_id": alias}
    descriptor = RunDescriptor(
        local_id=new_local_id(),
        run_id=None if alias else run_id,
        endpoint=live.endpoint.public_url() if live is not None else None,
        experiment_name=experiment_name,
    )
    spec = {**target, "experiment_name": experiment_name, "skip_logged_steps": skip_logged_steps}
    setup = RunSetup(live, owns, delivery, descriptor, ("attach", spec), alias=alias)
    if opener is not None:
        later = f"points for run {run_id} are kept and delivered as soon as it answers"
        opened = answer_now(setup, lambda: opener.attach(spec), later)
        if opened is not None:
            _opened(setup, opened)
            setup.params, setup.floors, setup.alias = opened.params, opened.floors, None
    return setup


def _opened(setup: RunSetup, opened: Opened) -> None:
    setup.opening = None
    setup.descriptor.opened_as(opened.run_id, opened.experiment_id, opened.run_name)


def answer_now(setup: RunSetup, action: Callable[[], _T], later: str) -> _T | None:
    """One attempt at `action`. A definite refusal raises (closing a client we own); no
    answer says once that the run goes on without waiting (`later`) and returns None."""
    client = setup.client
    try:
        return action()
    except APIError as exc:
        if exc.status in _DEFINITE_STATUSES:
            if setup.owns_client and client is not None:
                client.close()
            raise
        message = f"aidp-metrics: the server did not answer ({exc}); {later}"
        process_notices.once(message, message)
        return None
    except BaseException:
        if setup.owns_client and client is not None:
            client.close()
        raise


def client_or_offline(
    endpoint: Endpoint | str | None, client: TrackingClient | None
) -> tuple[TrackingClient | None, bool]:
    """The client to use and whether we own it; (None, False) for an offline run."""
    if client is not None:
        return client, False
    if os.environ.get(AIDP_METRICS_MODE, "").strip().lower() == "offline":
        return None, False
    if endpoint is None:
        try:
            endpoint = Endpoint.from_env()
        except NoEndpointConfigured as exc:
            process_notices.once(
                "no-endpoint",
                f"aidp-metrics: {exc}. Logging offline to the spool; upload later "
                "with `aidp-metrics sync`.",
            )
            return None, False
    return connect(endpoint), True


def string_tags(tags: Mapping[str, object]) -> dict[str, str]:
    return {
        sanitize_key(str(key)): str(value)[:MAX_TAG_VALUE_LENGTH] for key, value in tags.items()
    }


def default_tags() -> dict[str, str]:
    """What MLflow's client records for a new run (`source_tags`), and our version."""
    tags = {**source_tags(), "aidp_metrics.version": __version__}
    return {k: v for k, v in tags.items() if v}


class RunConstructors:
    """`Run.start` and `Run.attach`: each builds a `RunSetup` (one attempt at opening the
    run) and hands it to the class. `Run` inherits them; it is the public handle."""

    def __init__(self, setup: RunSetup) -> None:
        raise NotImplementedError  # Run's own __init__ takes the setup

    @classmethod
    def start(
        cls: type[_R],
        *,
        experiment_name: str | None = None,
        run_name: str | None = None,
        tags: Mapping[str, object] | None = None,
        endpoint: Endpoint | str | None = None,
        client: TrackingClient | None = None,
        experiment_id: str | None = None,
        offline: bool = False,
        **options: Any,
    ) -> _R:
        """Create a run (and its experiment if missing) and return it, ready to log.

        If the server does not answer, the run starts locally and is created as soon as it
        does; training never waits for it. Only a definite refusal (400, 401, 403, 404)
        raises. Offline (`offline=True`, `AIDP_METRICS_MODE=offline`, or nothing configured)
        the run lives in the spool until `aidp-metrics sync`.
        """
        return cls(
            start_setup(
                experiment_name=experiment_name,
                run_name=run_name,
                tags=tags,
                endpoint=endpoint,
                client=client,
                experiment_id=experiment_id,
                offline=offline,
                options=options,
            )
        )

    @classmethod
    def attach(
        cls: type[_R],
        run_id: str,
        *,
        endpoint: Endpoint | str | None = None,
        client: TrackingClient | None = None,
        skip_logged_steps: bool = False,
        experiment_name: str | None = None,
        offline: bool = False,
        **options: Any,
    ) -> _R:
        """Log into an existing run (marked RUNNING again if it had ended).

        If the server does not answer, the run keeps its points (memory, then spool) and
        attaches as soon as it does. Only a definite answer (404 for the run, 401, 403)
        raises. With `skip_logged_steps`, points at or below the last step the run already
        holds for their key are not sent again (a resumed job), and counted as skipped.

        `run_id` may be a local id (`local-...`, a run that had not reached the server when
        a checkpoint saved its id): it resolves to the run it became (this spool directory
        remembers, else the server's `aidp_metrics.local_id` tag in `experiment_name`). If
        neither knows it while the server answers (the job that had it was lost), the run
        is created now under that local id, and `aidp-metrics sync` of the lost job's
        journal later adds its points to this same run.
        """
        return cls(
            attach_setup(
                run_id,
                endpoint=endpoint,
                client=client,
                skip_logged_steps=skip_logged_steps,
                experiment_name=experiment_name,
                offline=offline,
                options=options,
            )
        )
