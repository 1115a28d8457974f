"""Doctor's artifact check: can this configuration write into the artifact store?

Through MLflow's own artifact repository for an experiment's artifact location (Default's,
else the first experiment the server lists), with the credentials the runs use: a probe
file is uploaded, listed back and deleted. Needs `aidp-metrics[artifacts]`; without it the
check is skipped with a note (metrics do not need it).
"""

from __future__ import annotations

import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aidp_metrics._connection.endpoint import Endpoint
from aidp_metrics._errors import AIDPError

if TYPE_CHECKING:
    import httpx

    from ._doctor import Report

PROBE_DIR = ".aidp-metrics-doctor"


def check_artifacts(
    report: Report, endpoint: Endpoint, auth: httpx.Auth | None, reply: dict[str, Any]
) -> None:
    from aidp_metrics._connection.auth import mlflow_credentials
    from aidp_metrics._uploads.store import EXTRA, ArtifactStore, mlflow_available

    if not mlflow_available():
        report.check(None, f'artifacts: not checked (needs pip install "{EXTRA}")')
        return
    location = _artifact_location(endpoint, auth, reply)
    if location is None:
        report.check(None, "artifacts: not checked (no experiment to take a location from)")
        return
    started = time.monotonic()
    try:
        store = ArtifactStore(location, endpoint, mlflow_credentials(auth, endpoint))
        name = f"probe-{uuid.uuid4().hex[:12]}.txt"
        with tempfile.TemporaryDirectory() as folder:
            probe = Path(folder) / name
            probe.write_text("aidp-metrics doctor: safe to delete\n")
            store.upload(str(probe), PROBE_DIR)
        listed = any(f.path.endswith(name) for f in store.list(PROBE_DIR))
    except (AIDPError, OSError) as exc:
        report.check(
            False,
            f"artifacts: cannot write to {location} ({exc})",
            "the artifact store refused or is unreachable: check the server's artifact "
            "settings (mlflow server --artifacts-destination) and your permissions on it",
        )
        return
    elapsed = (time.monotonic() - started) * 1000
    where = store.describe()
    if not listed:
        report.check(False, f"artifacts: wrote a probe to {where} but cannot list it back")
        return
    try:
        store.delete(f"{PROBE_DIR}/{name}")
    except (AIDPError, OSError) as exc:
        report.check(None, f"artifacts: {where} is writable, but the probe stayed ({exc})")
        return
    report.check(
        True,
        f"artifacts: {where} is reachable and writable (probe written, listed and deleted "
        f"in {elapsed:.0f} ms)",
    )


def _artifact_location(
    endpoint: Endpoint, auth: httpx.Auth | None, reply: dict[str, Any]
) -> str | None:
    location = (reply.get("experiment") or {}).get("artifact_location")
    if location:
        return str(location)
    from aidp_metrics._connection.client import MetricsClient
    from aidp_metrics._connection.retry import RetryPolicy

    with MetricsClient(endpoint, auth=auth) as client:
        try:
            found = client.request(
                "POST", "experiments/search", body={"max_results": 1}, retry=RetryPolicy.never()
            )
        except AIDPError:
            return None
    experiments = found.get("experiments") or []
    return str(experiments[0].get("artifact_location") or "") or None if experiments else None
