"""httpx authentication: OCI request signing for AI Data Platform, token/basic auth for MLflow.

The `oci` SDK is optional and imported only when a signer is built. Nothing here logs
headers, reprs show where a credential came from and never its value, and error messages
never include keys, pass phrases or tokens.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Generator, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from aidp_metrics._env import (
    MLFLOW_TRACKING_PASSWORD,
    MLFLOW_TRACKING_TOKEN,
    MLFLOW_TRACKING_USERNAME,
    OCI_CLI_AUTH,
)
from aidp_metrics._errors import ConfigurationError

from .endpoint import BasicCredential, Endpoint
from .oci_config import AUTH_MODES, read_profile, resolve_location
from .request_auth import (
    AIDP_PROVIDER,
    STALE_HEADERS,
    ProviderAuth,
    provider_auth,
    tracking_auth_name,
)

ENV_BASIC_SOURCE = f"{MLFLOW_TRACKING_USERNAME}/{MLFLOW_TRACKING_PASSWORD}"

# Headers the oci signers add or fill in; copied from the signed request back onto httpx's.
_SIGNED_HEADERS = ("authorization", "date", "x-content-sha256", "content-length", "content-type")
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class OCIRequestSigner(httpx.Auth):
    """Signs httpx requests with an `oci` signer (a `requests` auth callable).

    `refresh` returns a signer to use after a 401; it defaults to the signer's own
    `refresh_security_token()` when it has one. Without a refresh a 401 is returned as is.
    """

    requires_request_body = True

    def __init__(
        self,
        signer: Any,
        *,
        mode: str = "custom",
        profile: str | None = None,
        refresh: Callable[[], Any] | None = None,
    ) -> None:
        self._signer = signer
        self.mode = mode
        self.profile = profile
        if refresh is None and callable(getattr(signer, "refresh_security_token", None)):
            refresh = self._refresh_in_place
        self._refresh = refresh
        self._lock = threading.Lock()
        # Bumped on every refresh, so that concurrent 401s trigger one refresh, not many.
        self._generation = 0

    def __repr__(self) -> str:
        return f"OCIRequestSigner(mode={self.mode!r}, profile={self.profile!r})"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        generation = self._sign(request)
        response = yield request
        if response.status_code == 401 and self.refresh_after_401(generation):
            self._sign(request)
            yield request

    def refresh_after_401(self, generation: int) -> bool:
        """Refresh the credentials after a 401 to a request signed at `generation` (once for
        any number of concurrent 401s); False when this signer cannot refresh."""
        if self._refresh is None:
            return False
        self._refresh_once(generation, self._refresh)
        return True

    def _refresh_in_place(self) -> Any:
        self._signer.refresh_security_token()
        return self._signer

    def _refresh_once(self, generation: int, refresh: Callable[[], Any]) -> None:
        with self._lock:
            if self._generation != generation:
                return  # another request already refreshed since we signed
            try:
                self._signer = refresh()
            except ConfigurationError:
                raise
            except Exception as e:
                raise ConfigurationError(
                    f"{self.mode} auth: refreshing credentials after HTTP 401 failed "
                    f"({type(e).__name__}: {e})"
                ) from e
            self._generation += 1

    def _sign(self, request: httpx.Request) -> int:
        from oci._vendor.requests import PreparedRequest

        for name in STALE_HEADERS:
            request.headers.pop(name, None)
        body = request.content
        if request.method in _BODY_METHODS and "content-length" not in request.headers:
            request.headers["content-length"] = str(len(body))

        # Built by hand rather than with prepare(): requests would re-quote the URL, and the
        # signed (request-target) must match the path httpx actually sends.
        prepared = PreparedRequest()
        prepared.method = request.method
        prepared.url = str(request.url)
        prepared.prepare_headers(dict(request.headers))
        prepared.body = body
        generation = self.sign_prepared(prepared)

        for name in _SIGNED_HEADERS:
            value = prepared.headers.get(name)
            if value is not None:
                request.headers[name] = value
        # oci signs the URL's netloc as `host`, so send exactly that.
        request.headers["host"] = urlsplit(prepared.url).netloc
        return generation

    def sign_prepared(self, prepared: Any) -> int:
        """Sign a `requests` PreparedRequest (ours or `oci`'s vendored one) in place; returns
        the credentials' generation, for `refresh_after_401`. Stale signature headers must
        already be gone."""
        with self._lock:
            # Signers for resource principals and OKE refresh only here, not in __call__.
            get_token = getattr(self._signer, "get_security_token", None)
            if callable(get_token):
                get_token()
            self._signer(prepared)
            return self._generation


def oci_signer_auth(
    mode: str | None = None,
    *,
    config_file: str | Path | None = None,
    profile: str | None = None,
) -> OCIRequestSigner:
    """Build an OCI request signer.

    `mode` defaults to `OCI_CLI_AUTH`, else `security_token` if the profile has a
    `security_token_file`, else `api_key`. The config file and profile default to
    `OCI_CLI_CONFIG_FILE` / `OCI_CLI_PROFILE` (see `aidp_metrics._connection.oci_config`).
    """
    raw = mode or os.environ.get(OCI_CLI_AUTH) or ""
    chosen = raw.strip().lower().replace("-", "_") or None
    if chosen is not None and chosen not in AUTH_MODES:
        raise ConfigurationError(
            f"unknown OCI auth mode {raw!r}; expected one of: {', '.join(AUTH_MODES)}"
        )
    oci = _import_oci()
    if chosen is None:
        chosen = (
            "security_token"
            if read_profile(config_file, profile).get("security_token_file")
            else "api_key"
        )

    if chosen == "api_key":
        return _api_key_auth(oci, config_file, profile)
    if chosen == "security_token":
        return _security_token_auth(oci, config_file, profile)

    factories: dict[str, tuple[Callable[[], Any], str]] = {
        "instance_principal": (
            oci.auth.signers.InstancePrincipalsSecurityTokenSigner,
            "not running on an OCI instance?",
        ),
        "resource_principal": (
            oci.auth.signers.get_resource_principals_signer,
            "not running in an OCI resource with a resource principal?",
        ),
        "oke_workload_identity": (
            oci.auth.signers.get_oke_workload_identity_resource_principal_signer,
            "not running in an OKE pod with workload identity?",
        ),
    }
    factory, hint = factories[chosen]
    try:
        signer = factory()
    except Exception as e:
        raise ConfigurationError(f"{chosen} auth failed: {hint} ({type(e).__name__}: {e})") from e
    return OCIRequestSigner(signer, mode=chosen)


def _import_oci() -> Any:
    try:
        import oci
    except ImportError:
        raise ConfigurationError(
            'OCI request signing needs the oci package: pip install "aidp-metrics[oci]"'
        ) from None
    import oci.auth.signers
    import oci.signer

    return oci


def _api_key_auth(
    oci: Any, config_file: str | Path | None, profile: str | None
) -> OCIRequestSigner:
    path, name = resolve_location(config_file, profile)
    cfg = read_profile(path, name)
    missing = [k for k in ("user", "fingerprint", "tenancy") if not cfg.get(k)]
    if not cfg.get("key_file") and not cfg.get("key_content"):
        missing.append("key_file")
    if missing:
        msg = (
            f"api_key auth requires user, fingerprint, tenancy and key_file in profile "
            f"{name!r} of {path}. Missing: {', '.join(missing)}."
        )
        if cfg.get("security_token_file"):
            msg += (
                " This profile looks like a security_token profile; "
                "retry with OCI_CLI_AUTH=security_token."
            )
        raise ConfigurationError(msg)

    key_file = cfg.get("key_file")
    key_path = str(Path(key_file).expanduser()) if key_file else None
    where = f"key_file {key_path}" if key_path else f"key_content of profile {name!r}"
    try:
        signer = oci.signer.Signer(
            cfg["tenancy"],
            cfg["user"],
            cfg["fingerprint"],
            private_key_file_location=key_path,
            pass_phrase=cfg.get("pass_phrase"),
            private_key_content=cfg.get("key_content"),
        )
    except Exception as e:
        raise ConfigurationError(_key_error(where, e)) from None
    return OCIRequestSigner(signer, mode="api_key", profile=name)


def _security_token_auth(
    oci: Any, config_file: str | Path | None, profile: str | None
) -> OCIRequestSigner:
    path, name = resolve_location(config_file, profile)
    cfg = read_profile(path, name)
    missing = [k for k in ("security_token_file", "key_file") if not cfg.get(k)]
    if missing:
        raise ConfigurationError(
            f"security_token auth requires security_token_file and key_file in profile "
            f"{name!r} of {path}. Missing: {', '.join(missing)}. "
            "Create a session with `oci session authenticate`."
        )
    token_path = Path(cfg["security_token_file"]).expanduser()
    key_path = Path(cfg["key_file"]).expanduser()

    # Re-run on a 401: `oci session refresh` rewrites the token file in place.
    def build() -> Any:
        try:
            token = token_path.read_text(encoding="utf-8").strip()
        except OSError as e:
            raise ConfigurationError(
                f"cannot read security_token_file {token_path} of profile {name!r}: {e.strerror}"
            ) from None
        if not token:
            raise ConfigurationError(
                f"security_token_file {token_path} is empty; run `oci session authenticate`"
            )
        try:
            key = oci.signer.load_private_key_from_file(str(key_path), cfg.get("pass_phrase"))
        except Exception as e:
            raise ConfigurationError(_key_error(f"key_file {key_path}", e)) from None
        return oci.auth.signers.SecurityTokenSigner(token, key)

    return OCIRequestSigner(build(), mode="security_token", profile=name, refresh=build)


def _key_error(where: str, e: Exception) -> str:
    if isinstance(e, OSError):
        return f"cannot read {where}: {e.strerror}"
    # oci's and cryptography's key errors describe the problem, never the key itself.
    return f"cannot load the private key from {where}: {e}"


class BearerToken(httpx.Auth):
    """`Authorization: Bearer <token>`; the token never appears in repr."""

    def __init__(self, token: str, *, source: str = MLFLOW_TRACKING_TOKEN) -> None:
        self._token = token
        self.source = source

    def __repr__(self) -> str:
        return f"BearerToken(source={self.source!r})"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self._token}"
        yield request


class BasicAuth(httpx.BasicAuth):
    """httpx's Basic auth that also says where the credential came from, and shows nothing
    else in repr."""

    def __init__(self, username: str, password: str, *, source: str) -> None:
        super().__init__(username, password)
        self.source = source
        self._pair = (username, password)

    def __repr__(self) -> str:
        return f"BasicAuth(source={self.source!r})"


def mlflow_auth(credential: BasicCredential | None = None) -> httpx.Auth | None:
    """Auth for an MLflow tracking server, in MLflow's own order of precedence.

    The tracking URI's `user:password@` (`credential`) first, then
    `MLFLOW_TRACKING_USERNAME` + `MLFLOW_TRACKING_PASSWORD`, then `MLFLOW_TRACKING_TOKEN`;
    None when there is none. (MLflow's client sends the env credentials as a header and
    `requests` then replaces it with the URI's.)
    """
    if credential is not None:
        return BasicAuth(credential.username, credential.password, source=credential.source)
    username = os.environ.get(MLFLOW_TRACKING_USERNAME)
    password = os.environ.get(MLFLOW_TRACKING_PASSWORD)
    if username and password:
        return BasicAuth(username, password, source=ENV_BASIC_SOURCE)
    token = os.environ.get(MLFLOW_TRACKING_TOKEN)
    if token:
        return BearerToken(token)
    if username or password:
        have, need = ("USERNAME", "PASSWORD") if username else ("PASSWORD", "USERNAME")
        raise ConfigurationError(
            f"MLFLOW_TRACKING_{have} is set but MLFLOW_TRACKING_{need} is not; set both"
        )
    return None


def endpoint_auth(
    endpoint: Endpoint,
    *,
    oci_mode: str | None = None,
    config_file: str | Path | None = None,
    profile: str | None = None,
) -> httpx.Auth | None:
    """The auth every request to `endpoint` gets, unless the caller passes its own.

    `MLFLOW_TRACKING_AUTH` first, as MLflow's own client does: a provider's `requests` auth
    object signs our requests too (`aidp`, ours, is OCI request signing). An AIDP endpoint
    given explicit OCI settings (`oci_mode`, `config_file`, `profile`: the CLI's flags)
    keeps OCI signing. Else OCI request signing for AIDP and `mlflow_auth` for MLflow.
    """
    if endpoint.kind == "store":
        return None  # MLflow's own client opens it (and signs in to `databricks` itself)
    provider = tracking_auth_name()
    explicit_oci = endpoint.kind == "aidp" and any((oci_mode, config_file, profile))
    if provider is not None and provider != AIDP_PROVIDER and not explicit_oci:
        return provider_auth(provider)
    if endpoint.kind == "aidp" or provider == AIDP_PROVIDER:
        return oci_signer_auth(oci_mode, config_file=config_file, profile=profile)
    return mlflow_auth(endpoint.credential)


# -- the same credentials for MLflow's own client (artifact uploads) ------------------------


@dataclass(frozen=True)
class MlflowCredentials:
    """A client's auth as the fields of MLflow's `MlflowHostCreds`, for the artifact
    repositories of MLflow's client: `auth` names a request-auth provider (`aidp`, or the one
    `MLFLOW_TRACKING_AUTH` named), else Basic or Bearer. For `aidp`, `signer` is the run's own
    OCI signer, which our provider hands MLflow while these credentials are in scope (so a
    run configured with `--profile` or an explicit signer uploads with the same keys); on an
    AIDP workspace another provider (`provider`) goes through ours too, which adds AIDP's
    headers before it signs, as `MetricsClient` does for our own requests."""

    auth: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    signer: OCIRequestSigner | None = None
    provider: Any = None  # another provider's instance, for an AIDP workspace (AIDP headers)
    user_principal: str | None = None


def mlflow_credentials(auth: httpx.Auth | None, endpoint: Endpoint) -> MlflowCredentials | None:
    """The credentials MLflow's client needs to send what `auth` sends; None for an auth
    object of the caller's own that has no MLflow equivalent."""
    if auth is None:
        return MlflowCredentials()
    if isinstance(auth, OCIRequestSigner):
        return MlflowCredentials(
            auth=AIDP_PROVIDER, signer=auth, user_principal=endpoint.user_principal
        )
    if isinstance(auth, ProviderAuth):
        if endpoint.kind == "aidp":  # through ours, which adds AIDP's headers first
            return MlflowCredentials(
                auth=AIDP_PROVIDER,
                provider=auth.provider.instance,
                user_principal=endpoint.user_principal,
            )
        return MlflowCredentials(auth=auth.provider.name)
    if isinstance(auth, BasicAuth):
        username, password = auth._pair
        return MlflowCredentials(username=username, password=password)
    if isinstance(auth, BearerToken):
        return MlflowCredentials(token=auth._token)
    return None


_scoped: ContextVar[MlflowCredentials | None] = ContextVar("aidp_metrics_mlflow", default=None)


@contextlib.contextmanager
def mlflow_credentials_in_scope(credentials: MlflowCredentials) -> Iterator[None]:
    """Within the block, and only in this thread (context), MLflow's client sends with
    `credentials` (see `aidp_metrics._uploads.store`); other threads keep their own."""
    token = _scoped.set(credentials)
    try:
        yield
    finally:
        _scoped.reset(token)


def scoped_mlflow_credentials() -> MlflowCredentials | None:
    return _scoped.get()
