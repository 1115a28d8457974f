"""`RunHandle`, what every integration logs through, on its own (no framework imported),
against a real MLflow server, read back."""

from __future__ import annotations

import pickle
import warnings
from typing import Any

import pytest

from aidp_metrics import AIDPMetricsWarning, ConfigurationError, Endpoint, Run
from aidp_metrics.integrations._base import RunHandle, RunSpec
from tests.support.mlflow_server import get_metric_history, get_run, runs_in_experiment


@pytest.fixture
def url(mlflow_server: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    mlflow_server.start()
    for name in ("AIDP_RUN_ID", "MLFLOW_RUN_ID", "AIDP_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    u: str = mlflow_server.url
    return u


def points(url: str, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((int(m["step"]), float(m["value"])) for m in get_metric_history(url, run_id, key))


def status(url: str, run_id: str) -> str:
    found: str = get_run(url, run_id)["info"]["status"]
    return found


def test_a_handle_opens_lazily_ends_with_the_status_given_and_fails_the_run_meanwhile(
    url: str, fresh_experiment: str
) -> None:
    handle = RunHandle("Thing", kind="callback", options={"end_timeout": 30.0})
    opened: list[int] = []

    def spec() -> RunSpec:
        opened.append(1)
        return RunSpec(experiment_name=fresh_experiment, run_name="own", tags={"t": "1"})

    assert handle.run is None
    run = handle.get(spec)
    assert run is not None
    assert handle.get(spec) is run
    assert opened == [1]  # read once, when the run was opened
    assert not handle.user_owned
    assert run.status_on_exit == "FAILED"  # a crash now leaves it FAILED
    run.log_metrics({"loss": 0.5}, step=3)
    handle.end("FINISHED")
    assert run.status_on_exit == "FINISHED"
    assert status(url, run.run_id) == "FINISHED"
    assert points(url, run.run_id, "loss") == [(3, 0.5)]
    assert get_run(url, run.run_id)["info"]["run_name"] == "own"


def test_a_given_run_is_logged_into_and_only_flushed(url: str, fresh_experiment: str) -> None:
    with Run.start(experiment_name=fresh_experiment, run_name="mine") as run:
        handle = RunHandle("Thing", kind="callback", run=run)
        assert handle.user_owned
        assert handle.run is None  # not in use before the logging process asks for it
        assert handle.run_id == handle.user_run_id == run.run_id
        assert handle.get(RunSpec(tags={"framework": "thing"})) is run
        run.log_metrics({"loss": 1.0}, step=1)
        handle.set_exit_status("FAILED")  # the integration's "training began": not for it
        handle.end("FAILED")  # the integration's end: a flush
        assert run.status_on_exit == "FINISHED"  # untouched: the user's
        assert not run.ended
        assert status(url, run.run_id) == "RUNNING"
        assert points(url, run.run_id, "loss") == [(1, 1.0)]
        tags = {t["key"]: t["value"] for t in get_run(url, run.run_id)["data"]["tags"]}
        assert tags["framework"] == "thing"
        # a new train(): the same run again; a search trial: a run of its own beside it
        assert handle.open(RunSpec()) is run
        trial = handle.open(RunSpec(run_name="trial-0"), separate=True)
        assert trial is not None
        assert trial is not run
        assert handle.run is trial
        handle.end("FINISHED")  # a trial the handle opened: ended
        assert status(url, trial.run_id) == "FINISHED"
        assert status(url, run.run_id) == "RUNNING"
    assert status(url, run.run_id) == "FINISHED"
    assert sorted(r["info"]["run_id"] for r in runs_in_experiment(url, fresh_experiment)) == (
        sorted([run.run_id, trial.run_id])
    )


def test_a_pickled_copy_logs_into_the_given_run_by_id_and_leaves_it_open(
    url: str, fresh_experiment: str
) -> None:
    run = Run.start(experiment_name=fresh_experiment)
    run.log_metrics({"loss": 1.0}, step=1)
    handle = RunHandle("Thing", kind="logger", run=run)
    assert handle.get(RunSpec()) is run
    copy = pickle.loads(pickle.dumps(handle))  # ddp_spawn's worker
    assert copy.run is None
    assert copy.user_owned
    assert copy.user_run_id == run.run_id
    attached = copy.get(RunSpec())
    assert attached is not None
    assert attached is not run
    assert attached.run_id == run.run_id
    attached.log_metrics({"loss": 2.0}, step=2)
    copy.end("FINISHED")
    assert status(url, run.run_id) == "RUNNING"
    run.flush()  # step 1 is the user's run's to deliver, on its own schedule
    assert points(url, run.run_id, "loss") == [(1, 1.0), (2, 2.0)]
    run.end()
    attached.end()  # what that process's exit would do
    assert status(url, run.run_id) == "FINISHED"


def test_run_with_opening_arguments_or_not_a_run_is_refused() -> None:
    run = Run.start(offline=True, spool="off")
    try:
        given = {"run_id": "x", "experiment_name": "e"}
        with pytest.raises(ValueError, match="experiment_name=, run_id= cannot apply"):
            RunHandle("Thing", kind="logger", run=run, given=given)
        with pytest.raises(ValueError, match="flush_interval= cannot apply"):
            RunHandle("Thing", kind="logger", run=run, options={"flush_interval": 1.0})
        with pytest.raises(ValueError, match="endpoint= cannot apply"):
            RunHandle("Thing", kind="logger", run=run, endpoint=Endpoint.mlflow("http://x"))
        with pytest.raises(TypeError, match=r"takes an aidp_metrics\.Run, got str"):
            RunHandle("Thing", kind="logger", run="0123abcd")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="'flush_intervall' \\(did you mean 'flush_interval'"):
            RunHandle("Thing", kind="logger", options={"flush_intervall": 1.0})
        RunHandle("Thing", kind="logger", run=run, strict=True, given={"run_id": None})
    finally:
        run.end()


def test_a_broken_configuration_turns_the_integration_off_with_one_warning(url: str) -> None:
    handle = RunHandle("Thing", kind="tracker", options={"max_queue": 0})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert handle.get(RunSpec()) is None
        assert handle.get(RunSpec()) is None  # not tried again
    ours = [str(w.message) for w in caught if issubclass(w.category, AIDPMetricsWarning)]
    assert [m for m in ours if "the tracker failed" in m] == [
        "aidp-metrics: the tracker failed (ConfigurationError: max_queue must be >= 1, got 0); "
        "training goes on without it"
    ]
    strict = RunHandle("Thing", kind="tracker", strict=True, options={"max_queue": 0})
    with pytest.raises(ConfigurationError, match="max_queue"):
        strict.get(RunSpec())


def test_a_failing_hook_warns_once_per_hook_and_raises_with_strict() -> None:
    handle = RunHandle("Thing", kind="callback")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            with handle.guard("on_epoch_end"):
                raise RuntimeError("broken")
    assert [str(w.message) for w in caught] == [
        "aidp-metrics: on_epoch_end failed (RuntimeError: broken); training goes on"
    ]
    strict = RunHandle("Thing", kind="callback", strict=True)
    with pytest.raises(RuntimeError, match="broken"), strict.guard("on_epoch_end"):
        raise RuntimeError("broken")


def test_other_processes_open_nothing() -> None:
    handle = RunHandle("Thing", kind="logger", is_main=lambda: False)
    assert handle.get(RunSpec()) is None
    assert handle.run is None
