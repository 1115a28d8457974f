"""MLflow request-auth providers (`MLFLOW_TRACKING_AUTH`) applied to our httpx requests.

MLflow's client finds the provider whose `get_name()` equals `MLFLOW_TRACKING_AUTH` among
the classes registered under the entry point group `mlflow.request_auth_provider`, and
passes its `get_auth()` (a `requests` auth object) to every request. We do the same without
importing MLflow: `find_provider(name)` looks the name up, and `ProviderAuth` applies the
provider's `requests` auth object to each httpx request (a `requests` PreparedRequest built
from it, handed to the auth object, its headers and URL copied back), as `OCIRequestSigner`
does for the `oci` signers.

Nothing here logs or shows a credential: reprs and messages name the provider only.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Generator
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import httpx

from aidp_metrics._env import MLFLOW_TRACKING_AUTH
from aidp_metrics._errors import ConfigurationError
from aidp_metrics._redact import redact

# Left over from a previous signing; a signer would reuse rather than recompute them.
STALE_HEADERS = ("authorization", "date", "x-content-sha256")

ENTRY_POINT_GROUP = "mlflow.request_auth_provider"
TRACKING_AUTH_VARIABLE = MLFLOW_TRACKING_AUTH
AIDP_PROVIDER = "aidp"  # ours: aidp_metrics._mlflow_plugin

# One instance per provider and process, as MLflow's registry keeps them (providers may
# cache tokens between calls).
_found: dict[str, FoundProvider] = {}
_found_lock = threading.Lock()


def tracking_auth_name() -> str | None:
    """The provider `MLFLOW_TRACKING_AUTH` names, or None."""
    return os.environ.get(TRACKING_AUTH_VARIABLE, "").strip() or None


@dataclass(frozen=True)
class FoundProvider:
    """An installed provider: its name, where it comes from, and its instance."""

    name: str
    entry_point: str  # `name = module:attr`
    distribution: str | None  # `name version`, when the entry point knows its distribution
    instance: Any

    def __repr__(self) -> str:
        return f"FoundProvider(name={self.name!r}, entry_point={self.entry_point!r})"

    def origin(self) -> str:
        where = f"entry point {self.entry_point}"
        return f"{where} of {self.distribution}" if self.distribution else where


def find_provider(name: str) -> FoundProvider:
    """The installed provider whose `get_name()` is `name` (as MLflow matches it).

    Raises `ConfigurationError` naming the providers that are installed when none matches.
    """
    with _found_lock:
        cached = _found.get(name)
    if cached is not None:
        return cached
    # The entry point named like the provider first (usually the same): loading the others
    # may import heavy modules.
    candidates = sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name != name)
    names: list[str] = []
    broken: list[str] = []
    for entry_point in candidates:
        try:
            instance = entry_point.load()()
            provider_name = str(instance.get_name())
        except Exception as exc:  # a broken plugin must not hide the one asked for
            broken.append(f"{entry_point.name} ({type(exc).__name__})")
            continue
        if provider_name != name:
            names.append(provider_name)
            continue
        found = FoundProvider(name, _describe(entry_point), _distribution(entry_point), instance)
        with _found_lock:
            return _found.setdefault(name, found)
    installed = ", ".join(sorted(set(names))) or "none"
    message = (
        f"{TRACKING_AUTH_VARIABLE}={name!r} names no installed MLflow request-auth provider "
        f"(entry point group {ENTRY_POINT_GROUP}); installed: {installed}."
    )
    if broken:
        message += f" Could not load: {', '.join(broken)}."
    raise ConfigurationError(
        message + " Install the package that provides it, or unset " + TRACKING_AUTH_VARIABLE
    )


def provider_auth(name: str) -> ProviderAuth:
    """httpx auth that applies provider `name`'s `requests` auth object to every request."""
    return ProviderAuth(find_provider(name))


class ProviderAuth(httpx.Auth):
    """Applies an MLflow request-auth provider's `requests` auth object to httpx requests.

    Like MLflow's client, it asks the provider for its auth object on every request (a
    provider may hand out refreshed credentials). After a 401 it asks again and re-sends
    once if the provider gave a different object. The auth object's headers and URL are
    copied to the httpx request; `requests` response hooks it registers are not run.
    """

    requires_request_body = True

    def __init__(self, provider: FoundProvider) -> None:
        self.provider = provider

    @property
    def source(self) -> str:
        return f"{TRACKING_AUTH_VARIABLE}={self.provider.name}"

    def __repr__(self) -> str:
        return f"ProviderAuth(provider={self.provider.name!r})"

    def describe(self) -> str:
        """One line for humans (doctor); names the provider, never its credentials."""
        return (
            f"MLflow request-auth provider {self.provider.name!r} "
            f"(from {TRACKING_AUTH_VARIABLE}; {self.provider.origin()})"
        )

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        auth = self._auth()
        _apply(auth, request, self.provider.name)
        response = yield request
        if response.status_code == 401:
            fresh = self._auth()
            if fresh is not auth:
                _apply(fresh, request, self.provider.name)
                yield request

    def _auth(self) -> Any:
        try:
            return self.provider.instance.get_auth()
        except ConfigurationError:
            raise
        except Exception as exc:
            raise ConfigurationError(
                f"MLflow request-auth provider {self.provider.name!r} gave no credentials "
                f"({type(exc).__name__}: {exc})"
            ) from None


def _apply(auth: Any, request: httpx.Request, name: str) -> None:
    """Run `auth` (a `requests` auth callable) on a PreparedRequest copy of `request`, then
    give `request` the headers and URL it ended up with."""
    try:
        import requests
    except ImportError:
        raise ConfigurationError(
            f"MLflow request-auth provider {name!r} needs the requests package"
        ) from None

    for header in STALE_HEADERS:  # left by a previous attempt; signers would keep them
        request.headers.pop(header, None)
    # Built by hand rather than with prepare(): requests would re-quote the URL, and a
    # signature over the path must match the one httpx sends.
    prepared = requests.PreparedRequest()
    prepared.method = request.method
    prepared.url = str(request.url)
    prepared.prepare_headers(dict(request.headers))
    prepared.body = request.content or None
    try:
        result = auth(prepared) if auth is not None else prepared
    except ConfigurationError:
        raise
    except Exception as exc:
        raise ConfigurationError(
            f"MLflow request-auth provider {name!r} failed to authenticate a request "
            f"({type(exc).__name__}: {redact(str(exc))})"
        ) from None
    signed = result if result is not None else prepared

    for header in [h for h in request.headers if h not in signed.headers]:
        del request.headers[header]
    for header, value in signed.headers.items():
        # requests allows bytes values; HTTP headers are latin-1 on the wire
        request.headers[header] = value.decode("latin-1") if isinstance(value, bytes) else value
    if signed.url and signed.url != str(request.url):
        request.url = httpx.URL(signed.url)


def _describe(entry_point: EntryPoint) -> str:
    return f"{entry_point.name} = {entry_point.value}"


def _distribution(entry_point: EntryPoint) -> str | None:
    dist = getattr(entry_point, "dist", None)
    if dist is None:
        return None
    try:
        return f"{dist.name} {dist.version}"
    except Exception:  # malformed metadata: the provider still works
        return None
