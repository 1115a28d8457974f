"""Reading two runs back with MLflow's own client and listing how they differ: what the
parity tests (test_parity_<framework>.py) compare an MLflow integration's run and ours on."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from typing import Any

# The tags MLflow's client records for a new run, compared in every parity test.
SOURCE_TAGS = (
    "mlflow.user",
    "mlflow.source.name",
    "mlflow.source.type",
    "mlflow.source.git.commit",
    "mlflow.source.git.branch",
    "mlflow.source.git.repoURL",
    "mlflow.runName",
    "mlflow.note.content",
)
# GitPython (what MLflow reads git with) needs the git executable; we read the files.
GIT_DIFFERENCES = (
    set()
    if shutil.which("git")
    else {
        "tag mlflow.source.git.commit: only ours",
        "tag mlflow.source.git.branch: only ours",
    }
)


def run_as_script(monkeypatch: Any, path: str) -> None:
    """Make `path` the running script (`sys.argv[0]`), for MLflow's source and git tags and
    ours. MLflow reads git once per process and keeps it (`GitRunContext._cache`): a run
    an earlier test made in this worker (argv[0] "-c", no repository) would leave it
    without git tags, so the cache is emptied here, for this test only."""
    import sys

    from mlflow.tracking.context.git_context import GitRunContext
    from mlflow.tracking.context.registry import _run_context_provider_registry

    monkeypatch.setattr(sys, "argv", [path])
    for provider in _run_context_provider_registry:
        if isinstance(provider, GitRunContext):
            monkeypatch.setattr(provider, "_cache", {})


@dataclass
class RunView:
    experiment: str
    run_name: str
    params: dict[str, str]
    tags: dict[str, str]
    steps: dict[str, list[int]]  # metric key -> the distinct steps it was logged at


def read_run(url: str, run_id: str, tag_keys: tuple[str, ...] = ()) -> RunView:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=url)
    run = client.get_run(run_id)
    experiment = client.get_experiment(run.info.experiment_id).name
    steps = {
        key: sorted({m.step for m in client.get_metric_history(run_id, key)})
        for key in run.data.metrics
    }
    wanted = SOURCE_TAGS + tag_keys
    tags = {k: v for k, v in run.data.tags.items() if k in wanted}
    return RunView(experiment, run.info.run_name, dict(run.data.params), tags, steps)


def differences(theirs: RunView, ours: RunView) -> set[str]:
    """Every way `ours` differs from `theirs`, one line each."""
    found: set[str] = set()
    if theirs.experiment != ours.experiment:
        found.add(f"experiment: {theirs.experiment!r} vs {ours.experiment!r}")
    if theirs.run_name != ours.run_name:
        found.add(f"run name: {theirs.run_name!r} vs {ours.run_name!r}")
    _compare(found, "param", theirs.params, ours.params)
    _compare(found, "tag", theirs.tags, ours.tags)
    _compare(found, "metric", theirs.steps, ours.steps)
    return found


def _compare(found: set[str], what: str, theirs: dict[str, Any], ours: dict[str, Any]) -> None:
    for key in theirs.keys() - ours.keys():
        found.add(f"{what} {key}: only MLflow's")
    for key in ours.keys() - theirs.keys():
        found.add(f"{what} {key}: only ours")
    for key in theirs.keys() & ours.keys():
        if theirs[key] != ours[key]:
            found.add(changed(what, key, theirs[key], ours[key]))


def changed(what: str, key: str, theirs: object, ours: object) -> str:
    """The line `differences` gives a key both runs hold with different values."""
    return f"{what} {key}: {theirs!r} vs {ours!r}"
