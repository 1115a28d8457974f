"""`OCIRequestsAuth`: our OCI request signing as a `requests` auth object, for MLflow's client.

What `aidp_metrics._mlflow_plugin` hands MLflow. Per request it adds AIDP's headers
(`opc-request-id`; `opc-retry-token` on writes, kept by urllib3's retries of the same
request; `dh-user-principal` from `AIDP_USER_PRINCIPAL`), signs with the signer
`auth.oci_signer_auth` builds (same modes, profile and config file as the rest of
aidp-metrics) -- never leaving both `Content-Length` and `Transfer-Encoding: chunked` on a
request (requests marks an empty file's upload chunked; HTTP forbids the pair) -- and
registers a response hook that

- after a 401, refreshes the credentials once (session token re-read, principal token
  renewed) and re-sends the request signed again, and
- rewrites AIDP's error body `{"code", "message"}` into MLflow's `{"error_code", "message"}`:
  a 404 becomes `RESOURCE_DOES_NOT_EXIST` (so `get_experiment_by_name` returns None and
  `set_experiment` creates a new experiment), any other status keeps its code.
"""

from __future__ import annotations

import functools
import json
import os
import uuid
from typing import Any

import requests
from requests.auth import AuthBase

from aidp_metrics._env import AIDP_USER_PRINCIPAL

from .auth import OCIRequestSigner, oci_signer_auth
from .request_auth import STALE_HEADERS

NOT_FOUND_CODE = "RESOURCE_DOES_NOT_EXIST"
_WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class OCIRequestsAuth(AuthBase):
    """Signs `requests` requests for AIDP with an `OCIRequestSigner`; see the module doc."""

    def __init__(self, signer: OCIRequestSigner, *, user_principal: str | None = None) -> None:
        self.signer = signer
        self.user_principal = user_principal or None

    @classmethod
    def from_env(cls) -> OCIRequestsAuth:
        """From `OCI_CLI_AUTH` / `OCI_CLI_PROFILE` / `OCI_CLI_CONFIG_FILE` and
        `AIDP_USER_PRINCIPAL`, as every other aidp-metrics entry point reads them."""
        principal = os.environ.get(AIDP_USER_PRINCIPAL, "").strip()
        return cls(oci_signer_auth(), user_principal=principal)

    def __repr__(self) -> str:
        return f"OCIRequestsAuth(mode={self.signer.mode!r}, profile={self.signer.profile!r})"

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        add_aidp_headers(request, self.user_principal)
        generation = self._sign(request)
        request.register_hook("response", functools.partial(self._on_response, generation))
        return request

    def _sign(self, request: requests.PreparedRequest) -> int:
        for name in STALE_HEADERS:
            request.headers.pop(name, None)
        generation = self.signer.sign_prepared(request)
        if "content-length" in request.headers:
            # requests marks a body of unknown or zero length (an empty file) chunked; the
            # signer hashed it and set its length. HTTP forbids both, and a gateway refuses
            # them; Transfer-Encoding is not signed, so dropping it keeps the signature.
            request.headers.pop("transfer-encoding", None)
        return generation

    def _on_response(
        self, generation: int, response: requests.Response, **send_options: Any
    ) -> requests.Response:
        if response.status_code == 401 and self.signer.refresh_after_401(generation):
            response = self._resend(response, send_options)
        make_error_readable(response)
        return response

    def _resend(
        self, response: requests.Response, send_options: dict[str, Any]
    ) -> requests.Response:
        """The request again, signed with refreshed credentials (as requests' own
        HTTPDigestAuth re-sends after a 401); hooks do not run on the second answer."""
        _ = response.content  # read the body so that the connection can be reused
        response.close()
        again = response.request.copy()
        again.headers["opc-request-id"] = _request_id()
        self._sign(again)
        second: requests.Response = response.connection.send(again, **send_options)
        second.history.append(response)
        second.request = again
        return second


class AIDPHeaders(AuthBase):
    """AIDP's headers, then another `requests` auth object (an MLflow request-auth provider
    other than ours, whose requests to an AIDP workspace must carry them too)."""

    def __init__(self, inner: Any, *, user_principal: str | None = None) -> None:
        self.inner = inner
        self.user_principal = user_principal or None

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        add_aidp_headers(request, self.user_principal)
        signed = self.inner(request) if self.inner is not None else request
        return signed if signed is not None else request


def add_aidp_headers(request: requests.PreparedRequest, user_principal: str | None) -> None:
    """`opc-request-id`; on a write an `opc-retry-token` (urllib3's retries of the same
    request keep it); `dh-user-principal` when given. Headers already there are kept."""
    headers = request.headers
    headers.setdefault("opc-request-id", _request_id())
    if request.method in _WRITE_METHODS:
        headers.setdefault("opc-retry-token", uuid.uuid4().hex)
    if user_principal:
        headers.setdefault("dh-user-principal", user_principal)


def make_error_readable(response: requests.Response) -> None:
    """Give an AIDP error body (`{"code", "message"}`) MLflow's `error_code` field."""
    if response.status_code < 400:
        return
    try:
        body = json.loads(response.content)
    except ValueError:
        return
    if not isinstance(body, dict) or "error_code" in body or "code" not in body:
        return
    code = NOT_FOUND_CODE if response.status_code == 404 else str(body["code"])
    readable = {**body, "error_code": code, "message": str(body.get("message", ""))}
    # requests keeps the body here; a hook may replace it (there is no public setter).
    response._content = json.dumps(readable).encode()
    response.encoding = "utf-8"


def _request_id() -> str:
    return uuid.uuid4().hex.upper()
