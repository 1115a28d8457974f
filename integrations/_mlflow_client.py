"""`RunClient`: what `logger.experiment` is, the `MlflowClient` calls training code makes
on MLflow's integrations, each with the run id first, answered by an `aidp_metrics.Run`.

    self.logger.experiment.log_metric(self.logger.run_id, "acc", 0.9, step=3)
    self.logger.experiment.log_artifact(self.logger.run_id, "confusion.png")

Each call goes through the run's own non-blocking, durable path (queue, spool), never a
request on the caller's thread; `synchronous=True` (per call, or the integration's
default) then waits for delivery as `Run.flush` does.

A run id that is not the integration's run: nothing is logged and one notice names it.
Logging into another run from inside training would need a second `Run` (threads, spool)
behind the user's back; `aidp_metrics.Run.attach(run_id)` does that explicitly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aidp_metrics import Run

__all__ = ["RunClient"]

Warn = Callable[[str, str], None]  # (topic, message): one notice per topic


class RunClient:
    """The `MlflowClient` subset Lightning code calls on `MLFlowLogger.experiment`."""

    def __init__(self, run: Run, *, synchronous: bool, warn: Warn) -> None:
        self._run = run
        self._synchronous = synchronous
        self._warn = warn

    @property
    def run(self) -> Run:
        """The `aidp_metrics.Run` behind it."""
        return self._run

    def log_metric(
        self,
        run_id: str,
        key: str,
        value: float,
        timestamp: int | None = None,
        step: int | None = None,
        synchronous: bool | None = None,
        **_mlflow_only: Any,  # dataset_name, dataset_digest, model_id: no MLflow 3 models here
    ) -> None:
        if self._ours(run_id, "log_metric"):
            self._run.log_metric(key, value, step=step or 0, timestamp=timestamp)
            self._done(synchronous)

    def log_param(self, run_id: str, key: str, value: Any, synchronous: bool | None = None) -> Any:
        if self._ours(run_id, "log_param"):
            self._run.log_params({key: value})
            self._done(synchronous)
        return value

    def set_tag(self, run_id: str, key: str, value: Any, synchronous: bool | None = None) -> None:
        if self._ours(run_id, "set_tag"):
            self._run.set_tags({key: value})
            self._done(synchronous)

    def log_batch(
        self,
        run_id: str,
        metrics: Iterable[Any] = (),
        params: Iterable[Any] = (),
        tags: Iterable[Any] = (),
        synchronous: bool | None = None,
    ) -> None:
        """`mlflow.entities.Metric` / `Param` / `RunTag` (or anything with their fields)."""
        if not self._ours(run_id, "log_batch"):
            return
        param_items = {p.key: p.value for p in params}
        if param_items:
            self._run.log_params(param_items)
        tag_items = {t.key: t.value for t in tags}
        if tag_items:
            self._run.set_tags(tag_items)
        for metric in metrics:
            timestamp = getattr(metric, "timestamp", None)
            self._run.log_metric(
                metric.key, metric.value, step=getattr(metric, "step", 0) or 0, timestamp=timestamp
            )
        self._done(synchronous)

    def log_artifact(self, run_id: str, local_path: str, artifact_path: str | None = None) -> None:
        if self._ours(run_id, "log_artifact"):
            self._run.log_artifact(local_path, artifact_path)

    def log_artifacts(self, run_id: str, local_dir: str, artifact_path: str | None = None) -> None:
        if self._ours(run_id, "log_artifacts"):
            self._run.log_artifacts(local_dir, artifact_path)

    def log_figure(
        self,
        run_id: str,
        figure: Any,
        artifact_file: str,
        *,
        save_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        if self._ours(run_id, "log_figure"):
            self._run.log_figure(figure, artifact_file, **(save_kwargs or {}))

    def log_dict(self, run_id: str, dictionary: Any, artifact_file: str) -> None:
        if self._ours(run_id, "log_dict"):
            self._run.log_dict(dictionary, artifact_file)

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        if self._ours(run_id, "log_text"):
            self._run.log_text(text, artifact_file)

    # -- internals -----------------------------------------------------------------------

    def _ours(self, run_id: object, call: str) -> bool:
        if run_id == self._run.run_id:
            return True
        self._warn(
            f"other run {run_id}",
            f"experiment.{call}({run_id!r}, ...) names another run than this logger's "
            f"({self._run.run_id}); it is not logged (use aidp_metrics.Run.attach({run_id!r}) "
            "to log into another run)",
        )
        return False

    def _done(self, synchronous: bool | None) -> None:
        if self._synchronous if synchronous is None else synchronous:
            self._run.flush(self._run.options.end_timeout)

    def __repr__(self) -> str:
        return f"RunClient(run_id={self._run.run_id!r})"
