"""Opening a run on the server: create it, attach to it, or find what a local id became.

The one way a run is opened, whoever asks: the first attempt in `Run.start`/`Run.attach`
(on the caller's thread, one try), the deferred create/attach op in the delivery loop
(retried by the failure policy), and `aidp-metrics sync`. A run created here is tagged with
its local id (`aidp_metrics.local_id`), so whoever looks for that local id later -- a sync
after a crash, a resumed job on another machine -- finds this run instead of making another.

A local id (`local-...`) resolves through this spool directory's `ids/` map, then the
server's tag. When neither knows it but the server answers (the job that started the run
was lost before it reached the server), the run is created now, tagged with that local id:
the resumed job logs into it live, and a later `sync` of the lost job's journal finds it by
the tag and adds the first part.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aidp_metrics._connection.client import TrackingClient, dumps, expect
from aidp_metrics._connection.retry import RetryPolicy
from aidp_metrics._queue.journal import DESCRIPTOR_FILE, run_id_for, save_run_id

LOCAL_ID_TAG = "aidp_metrics.local_id"
RESUMED_FROM_TAG = "aidp_metrics.resumed_from"  # a run a resumed job created for a lost one
_ONE_ATTEMPT = RetryPolicy.never()


@dataclass
class Opened:
    """The run the server holds now."""

    run_id: str
    run_name: str | None = None
    experiment_id: str | None = None
    params: dict[str, str] = field(default_factory=dict)
    floors: dict[str, int] = field(default_factory=dict)  # skip_logged_steps: last step per key
    created: bool = False


class RunOpener:
    """Opens runs through `client`, one attempt per call (callers own the retrying)."""

    def __init__(self, client: TrackingClient, spool_root: Path | None = None) -> None:
        self.client = client
        self.spool_root = spool_root

    def open(
        self, kind: str, spec: dict[str, Any], local_id: str, token: str | None = None
    ) -> Opened:
        """Carry out a `create` or `attach` op (as queued and journaled)."""
        if kind == "create":
            return self.create(spec, local_id, token)
        return self.attach(spec, token)

    def create(self, spec: dict[str, Any], local_id: str, token: str | None = None) -> Opened:
        """Create the run of `spec` (its experiment too, if missing), tagged `local_id`."""
        client = self.client
        experiment_id = spec.get("experiment_id") or client.experiment_id_for(
            spec.get("experiment_name") or "Default", retry=_ONE_ATTEMPT
        )
        info = client.create_run(
            experiment_id=experiment_id,
            run_name=spec.get("run_name"),
            tags={**(spec.get("tags") or {}), LOCAL_ID_TAG: local_id},
            start_time=spec.get("start_time"),
            retry=_ONE_ATTEMPT,
            retry_token=token,
        )
        return Opened(
            info.run_id, info.run_name or spec.get("run_name"), experiment_id, created=True
        )

    def attach(self, spec: dict[str, Any], token: str | None = None) -> Opened:
        """Attach to `spec["run_id"]`, or to the run `spec["local_id"]` became (created now
        when nobody knows it), marking it RUNNING again if it had ended."""
        run_id = spec.get("run_id")
        if run_id is None:
            local_id = str(spec["local_id"])
            run_id = self.resolve(local_id, spec.get("experiment_name"))
            if run_id is None:
                return self._create_for(local_id, spec, token)
        found = self.client.get_run(str(run_id), retry=_ONE_ATTEMPT)
        info = expect(found, "info", path="runs/get")
        if info.get("status") != "RUNNING":
            body = dumps({"run_id": run_id, "status": "RUNNING"})
            self.client.send("POST", "runs/update", content=body, retry_token=token)
        data = found.get("data") or {}
        return Opened(
            str(run_id),
            info.get("run_name"),
            str(info.get("experiment_id") or "") or None,
            params={str(p["key"]): str(p["value"]) for p in data.get("params") or []},
            floors=last_steps(found) if spec.get("skip_logged_steps") else {},
        )

    def resolve(
        self, local_id: str, experiment: str | None, experiment_id: str | None = None
    ) -> str | None:
        """The server run `local_id` became: this spool directory knows, or the server's tag
        (in the experiment given by id, else by name, else "Default")."""
        if self.spool_root is not None:
            known = run_id_for(local_id, self.spool_root)
            if known is not None:
                return known
        return find_created(self.client, local_id, experiment, experiment_id)

    def resumed_steps(self, run_id: str, local_id: str) -> dict[str, int]:
        """For `sync` of the journal of `local_id` into `run_id`: if a resumed job created
        that run (the first job was lost), the first step it logged per key. The lost job's
        points from there on are not sent: the resumed job logged those steps again, and its
        points are the ones the run shows (each step once)."""
        found = self.client.get_run(run_id)
        tags = {t.get("key"): t.get("value") for t in (found.get("data") or {}).get("tags") or []}
        if tags.get(RESUMED_FROM_TAG) != local_id:
            return {}
        keys = {str(m["key"]) for m in (found.get("data") or {}).get("metrics") or []}
        firsts: dict[str, int] = {}
        for key in keys:
            steps = [point.step for point in self.client.get_metric_history(run_id, key)]
            if steps:
                firsts[key] = min(steps)
        return firsts

    def _create_for(self, local_id: str, spec: dict[str, Any], token: str | None) -> Opened:
        """A local id nobody can resolve while the server answers: the job that had it was
        lost before its run reached the server. Create that run now, under its local id."""
        create = {
            "experiment_name": spec.get("experiment_name"),
            "run_name": spec.get("run_name") or self._local_name(local_id),
            "tags": {RESUMED_FROM_TAG: local_id},
        }
        opened = self.create(create, local_id, token)
        if self.spool_root is not None:
            try:
                save_run_id(self.spool_root, local_id, opened.run_id)
            except OSError:
                pass  # the server's tag finds it too
        return opened

    def _local_name(self, local_id: str) -> str | None:
        """The name the lost job gave its run, if its journal is in this spool directory."""
        if self.spool_root is None:
            return None
        path = self.spool_root / "runs" / local_id / DESCRIPTOR_FILE
        try:
            name = json.loads(path.read_text(encoding="utf-8")).get("run_name")
        except (OSError, ValueError, AttributeError):
            return None
        return str(name) if name else None


def find_created(
    client: TrackingClient,
    local_id: str,
    experiment: str | None,
    experiment_id: str | None = None,
) -> str | None:
    """The server run tagged with `local_id` (in the experiment given by id, else by name,
    else "Default"), if any."""
    if experiment_id is None:
        found = client.get_experiment_by_name(experiment or "Default")
        if found is None:
            return None
        experiment_id = str(found["experiment_id"])
    runs = client.search_runs(
        [experiment_id], f"tags.`{LOCAL_ID_TAG}` = '{local_id}'", max_results=1
    )
    return str(runs[0]["info"]["run_id"]) if runs else None


def last_steps(run: dict[str, Any]) -> dict[str, int]:
    """The last step the server holds for each key (`runs/get` lists each key's latest)."""
    floors: dict[str, int] = {}
    for metric in (run.get("data") or {}).get("metrics") or []:
        try:
            key, step = str(metric["key"]), int(metric.get("step", 0))
        except (KeyError, TypeError, ValueError):
            continue
        floors[key] = max(step, floors.get(key, step))
    return floors


__all__ = ["LOCAL_ID_TAG", "Opened", "RunOpener", "find_created", "last_steps"]
