"""How every integration opens its run: start, attach or resume, never at the cost of a point.

- Continuing a run (`run_id=`, `AIDP_RUN_ID` / `MLFLOW_RUN_ID`, a resumed checkpoint) attaches
  with `skip_logged_steps`: a resumed job does not write a step twice, and one message says
  how many points it did not send again.
- A run the server refuses (401, 403, 404 for the run, a broken configuration) costs no
  point: one warning, and the run goes on offline, its points kept in the spool for
  `aidp-metrics sync` once the problem is fixed (`strict=True` raises instead).
- Options are checked when the integration is constructed: a misspelt one is a `TypeError`
  naming it and the closest valid name, not a silent no-logging run.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from aidp_metrics.errors import AIDPError, AIDPMetricsWarning
from aidp_metrics.options import DeliveryOptions, check_option_names

if TYPE_CHECKING:
    from aidp_metrics import Endpoint, MetricsClient, Run

RUN_OPTIONS = DeliveryOptions.names() | {"client"}  # a MetricsClient to send with
_ENDPOINT_FIELDS = ("kind", "base_url", "user_principal", "region", "instance_id", "workspace_key")


def check_run_options(options: Iterable[str], where: str, extra: Iterable[str] = ()) -> None:
    """`TypeError` for an option neither `Run` nor the integration knows."""
    check_option_names(options, RUN_OPTIONS | frozenset(extra), where)


def open_run(
    *,
    run_id: str | None = None,
    experiment_name: str | None = None,
    run_name: str | None = None,
    tags: Mapping[str, object] | None = None,
    endpoint: Endpoint | str | None = None,
    client: MetricsClient | None = None,
    strict: bool = False,
    environment_run_id: bool = True,
    **options: Any,
) -> Run:
    """Attach to `run_id` (or, with `environment_run_id`, the environment's run id), else
    start a run. A refusal warns once and returns an offline run that keeps every point in
    the spool."""
    from aidp_metrics import Run
    from aidp_metrics.env import EXPERIMENT_VARIABLES, RUN_ID_VARIABLES, first_env

    target = run_id or (first_env(RUN_ID_VARIABLES) if environment_run_id else None)
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
            run_name=run_name,
            tags=tags,
            endpoint=endpoint,
            client=client,
            **options,
        )
    except AIDPError as exc:
        if strict:
            raise
        warnings.warn(
            f"aidp-metrics: could not start or attach the run ({exc}); training goes on and "
            "its points are kept in the spool: deliver them with `aidp-metrics sync` once "
            "this is fixed",
            AIDPMetricsWarning,
            stacklevel=4,
        )
    if target is not None:
        run = Run.attach(target, offline=True, experiment_name=experiment_name, **options)
        if tags:
            run.set_tags(tags)
        return run
    return Run.start(
        experiment_name=experiment_name, run_name=run_name, tags=tags, offline=True, **options
    )


# -- checkpoint state: what can be rebuilt from JSON (Transformers' stateful callbacks) ---------


def endpoint_state(endpoint: Endpoint | str | None) -> dict[str, Any] | str | None:
    """An endpoint as JSON, never with its credential (read from the environment again):
    a tracking URI's `user:password@` is left out too."""
    from aidp_metrics import Endpoint
    from aidp_metrics.errors import ConfigurationError
    from aidp_metrics.redact import redact_url

    if isinstance(endpoint, str):
        try:
            return Endpoint.mlflow(endpoint).public_url()
        except ConfigurationError:  # not a URL: kept (masked) so the rebuilt one says so too
            return redact_url(endpoint)
    if not isinstance(endpoint, Endpoint):
        return endpoint
    return {name: getattr(endpoint, name) for name in _ENDPOINT_FIELDS}


def endpoint_from_state(value: Endpoint | str | Mapping[str, Any] | None) -> Endpoint | str | None:
    from aidp_metrics import Endpoint

    if isinstance(value, Mapping):
        return Endpoint(**{k: v for k, v in value.items() if k in _ENDPOINT_FIELDS})
    return value


def options_state(options: Mapping[str, Any]) -> dict[str, Any]:
    """Run options as JSON (`retry` as its fields, a path as a string)."""
    from aidp_metrics.retry import RetryPolicy

    state: dict[str, Any] = {}
    for name, value in options.items():
        if isinstance(value, RetryPolicy):
            fields = {f: getattr(value, f) for f in RetryPolicy.__dataclass_fields__}
            value = {f: sorted(v) if isinstance(v, frozenset) else v for f, v in fields.items()}
        elif isinstance(value, os.PathLike):  # spool_dir=Path(...)
            value = os.fspath(value)
        state[name] = value
    return state


def options_from_state(options: Mapping[str, Any]) -> dict[str, Any]:
    from aidp_metrics.retry import RetryPolicy

    restored = dict(options)
    retry = restored.get("retry")
    if isinstance(retry, Mapping):
        fields: dict[str, Any] = {
            k: frozenset(v) if isinstance(v, list) else v for k, v in retry.items()
        }
        restored["retry"] = RetryPolicy(**fields)
    return restored
