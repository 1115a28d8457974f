"""Where a run's artifacts go: MLflow's own artifact repository for the run's `artifact_uri`.

`mlflow.store.artifact.artifact_repository_registry.get_artifact_repository` picks the
repository by the URI's scheme: `mlflow-artifacts:` (proxied through the tracking server,
resolved against the tracking URI as MLflow's client resolves it: `{tracking URI}/api/2.0/
mlflow-artifacts/artifacts/...`, which for AIDP is the workspace's `.../mlops/...`), a local
path, `s3://`, `gs://`, and any plugin's (`oci://`). Needs `mlflow-skinny`
(`aidp-metrics[artifacts]`), imported on the uploader's thread, never at `import`.

Credentials. MLflow's HTTP repositories build their `MlflowHostCreds` from the environment
(`get_default_host_creds` in `mlflow.store.artifact.http_artifact_repo`, on every request).
Setting `MLFLOW_TRACKING_AUTH` & co in `os.environ` would change every thread's MLflow
client. Instead, that one function is wrapped (once, when the first store is built): inside
`ArtifactStore`'s calls, and only in the thread making them (a `ContextVar`), it returns
MLflow's own `MlflowHostCreds` with the run's credentials in place of the environment's --
`auth="aidp"` with the run's own OCI signer (our `aidp` provider hands it to MLflow), the
`MLFLOW_TRACKING_AUTH` provider, or Basic / Bearer -- and MLflow's answer everywhere else.
The repository's own thread pool (downloads fan out over it) runs its tasks in the
submitting thread's context, so they are in the scope too.

Failures become the package's typed errors (`APIError`), so `retry.decide` judges them as
it judges a metric request. MLflow's client retries a failed request itself first
(`MLFLOW_HTTP_REQUEST_MAX_RETRIES`, 7 by default: minutes against a server that is down).
"""

from __future__ import annotations

import contextvars
import functools
import importlib.util
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from aidp_metrics._connection.auth import (
    MlflowCredentials,
    mlflow_credentials,
    mlflow_credentials_in_scope,
    scoped_mlflow_credentials,
)
from aidp_metrics._connection.client import TrackingClient, status_error
from aidp_metrics._connection.endpoint import Endpoint
from aidp_metrics._connection.retry import RetryPolicy, parse_retry_after
from aidp_metrics._errors import APIError, ConfigurationError, TransportError
from aidp_metrics._notice import Notices

EXTRA = "aidp-metrics[artifacts]"
MISSING = (
    f'uploading artifacts needs MLflow\'s artifact client: pip install "{EXTRA}" (mlflow-skinny)'
)
_wrap_lock = threading.Lock()
_notices = Notices()


@functools.cache
def mlflow_available() -> bool:
    """Whether MLflow's client can be imported (without importing it; asked once)."""
    try:
        return importlib.util.find_spec("mlflow") is not None
    except (ValueError, ImportError):  # sys.modules["mlflow"] is None, or a broken install
        return False


@dataclass(frozen=True)
class ArtifactFile:
    path: str
    is_dir: bool
    size: int | None


class ArtifactStore:
    """One run's artifact location, through MLflow's repository for its scheme."""

    def __init__(
        self, artifact_uri: str, endpoint: Endpoint, credentials: MlflowCredentials | None
    ) -> None:
        self.artifact_uri = artifact_uri
        self.credentials = credentials
        with self._scope():
            from mlflow.store.artifact.artifact_repository_registry import (
                get_artifact_repository,
            )

            _wrap_host_creds()
            tracking_uri = endpoint.store_uri.uri if endpoint.store_uri else endpoint.base_url
            self._repo: Any = get_artifact_repository(artifact_uri, tracking_uri=tracking_uri)
        self._workers: int | None = None
        pool = getattr(self._repo, "thread_pool", None)
        if isinstance(pool, ThreadPoolExecutor):  # downloads fan out: keep the scope there
            pool.shutdown(wait=False)
            self._workers = getattr(self._repo, "max_workers", None)
            self._repo.thread_pool = _ScopedPool(self._workers, "aidp-metrics-artifacts")

    @classmethod
    def for_run(
        cls, client: TrackingClient, run_id: str, *, retry: RetryPolicy | None = None
    ) -> ArtifactStore:
        """The store of `run_id`, from the `artifact_uri` the server gives the run."""
        info = client.get_run(run_id, retry=retry)["info"]
        uri = info.get("artifact_uri")
        if not uri:
            raise ConfigurationError(f"the server gave run {run_id} no artifact_uri")
        auth = getattr(client, "auth", None)  # a store URI's client has none: MLflow's own
        credentials = mlflow_credentials(auth, client.endpoint)
        if credentials is None:
            _notices.once(
                "own-auth",
                f"aidp-metrics: artifact uploads cannot use the client's own auth "
                f"({type(auth).__name__}); they go with MLflow's credentials from "
                "the environment (MLFLOW_TRACKING_AUTH, MLFLOW_TRACKING_TOKEN, ...)",
            )
        return cls(str(uri), client.endpoint, credentials)

    def describe(self) -> str:
        where = getattr(self._repo, "artifact_uri", self.artifact_uri)
        return self.artifact_uri if where == self.artifact_uri else f"{self.artifact_uri} ({where})"

    def upload(self, local_file: str, directory: str | None) -> None:
        """Put `local_file` at `directory/<its name>` (replacing what is there)."""
        with self._scope():
            self._repo.log_artifact(local_file, directory)

    def list(self, path: str | None = None) -> list[ArtifactFile]:
        """Every file under `path` (recursively), sorted."""
        found: list[ArtifactFile] = []
        with self._scope():
            for info in self._repo.list_artifacts(path):
                if info.is_dir:
                    found.extend(self.list(info.path))
                else:
                    found.append(ArtifactFile(info.path, False, info.file_size))
        return sorted(found, key=lambda f: f.path)

    def download(self, path: str, directory: str) -> str:
        """MLflow fans a download out over the repository's pool: a pool of this call's,
        shut down (its threads joined) when the download is over, so none outlives it."""
        with self._scope(), _ScopedPool(self._workers, "aidp-metrics-artifacts") as pool:
            self._repo.thread_pool = pool
            return str(self._repo.download_artifacts(path, directory))

    def delete(self, path: str) -> None:
        with self._scope():
            self._repo.delete_artifacts(path)

    def _scope(self) -> Any:
        if self.credentials is None:  # an auth of the caller's own: MLflow's environment
            return _Translated()
        return _Translated(mlflow_credentials_in_scope(self.credentials))


class _ScopedPool(ThreadPoolExecutor):
    """MLflow's pool for one repository, running each task in the submitter's context (so
    in the scoped credentials: a `ContextVar` does not cross into a pool thread by itself)."""

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        return super().submit(contextvars.copy_context().run, fn, *args, **kwargs)


class _Translated:
    """Runs a block with (optionally) scoped credentials and turns MLflow's, `requests`' and
    urllib3's errors into `APIError`s (anything else, e.g. a missing snapshot, goes through)."""

    def __init__(self, inner: Any = None) -> None:
        self._inner = inner

    def __enter__(self) -> None:
        if self._inner is not None:
            self._inner.__enter__()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> None:
        if self._inner is not None:
            self._inner.__exit__(kind, exc, tb)
        if exc is not None and not isinstance(exc, APIError):
            error = translate(exc)
            if error is not None:
                raise error from None


def translate(exc: BaseException) -> APIError | None:
    """The typed error for what MLflow's client raised; None when it is not about HTTP
    (a snapshot that cannot be read, a bug): that goes through as it is."""
    import requests
    from mlflow.exceptions import MlflowException

    response = getattr(exc, "response", None)
    if isinstance(exc, requests.HTTPError) and response is not None:
        text = (response.text or response.reason or "").strip().replace("\n", " ")[:300]
        return _status_error(
            response.status_code, text, headers=response.headers, path=_path(response)
        )
    for cause in (exc, exc.__cause__, exc.__context__):
        if isinstance(cause, (requests.ConnectionError, requests.Timeout)):
            return TransportError(f"{type(cause).__name__}: {_short(cause)}")
        if isinstance(cause, requests.exceptions.RetryError):
            return _status_error(503, _short(cause))
    if isinstance(exc, MlflowException):
        if "failed with exception" in str(exc):  # http_request's wrapper of a network error
            return TransportError(_short(exc))
        status: Any = exc.get_http_status_code  # untyped in MLflow
        return _status_error(int(status()), _short(exc))
    return None


def _status_error(status: int, message: str, *, headers: Any = None, path: str = "") -> APIError:
    headers = headers or {}
    return status_error(
        status,
        message,
        code=None,
        method="",
        path=path,
        opc_request_id=headers.get("opc-request-id"),
        retry_after=parse_retry_after(headers.get("retry-after")),
    )


def _short(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]


def _path(response: Any) -> str:
    request = getattr(response, "request", None)
    return str(getattr(request, "path_url", "") or "")


def _wrap_host_creds() -> None:
    """Give MLflow's HTTP artifact repositories the scoped credentials (see the module doc)."""
    http_artifact_repo: Any = importlib.import_module("mlflow.store.artifact.http_artifact_repo")
    with _wrap_lock:
        original = http_artifact_repo.get_default_host_creds
        if getattr(original, "aidp_metrics_scoped", False):
            return

        def host_creds(store_uri: str) -> Any:
            creds = original(store_uri)
            scoped = scoped_mlflow_credentials()
            if scoped is None:
                return creds
            return type(creds)(  # MLflow's TLS settings, the run's credentials
                host=creds.host,
                username=scoped.username,
                password=scoped.password,
                token=scoped.token,
                auth=scoped.auth,
                aws_sigv4=creds.aws_sigv4,
                ignore_tls_verification=creds.ignore_tls_verification,
                client_cert_path=creds.client_cert_path,
                server_cert_path=creds.server_cert_path,
            )

        host_creds.aidp_metrics_scoped = True  # type: ignore[attr-defined]
        http_artifact_repo.get_default_host_creds = host_creds
