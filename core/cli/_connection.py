"""Endpoint and credentials for a CLI command, resolved the same way by every command.

`--tracking-uri` / `--endpoint` and the OCI flags on top of the environment, into a
client (`connect`: HTTP, or MLflow's own client for a store URI). httpx and the client
load only when a client is built.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aidp_metrics._connection.endpoint import Endpoint
from aidp_metrics._env import AIDP_INSTANCE_ID, AIDP_USER_PRINCIPAL, AIDP_WORKSPACE_KEY
from aidp_metrics._errors import ConfigurationError

if TYPE_CHECKING:
    import httpx

    from aidp_metrics._connection.client import TrackingClient


@dataclass(frozen=True)
class ConnectionOptions:
    """The CLI's global connection flags; None means "from the environment"."""

    auth: str | None = None
    profile: str | None = None
    config_file: str | None = None
    tracking_uri: str | None = None
    endpoint: str | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ConnectionOptions:
        return cls(
            auth=args.auth,
            profile=args.profile,
            config_file=args.config_file,
            tracking_uri=args.tracking_uri,
            endpoint=args.endpoint,
        )


def resolve_endpoint(options: ConnectionOptions) -> Endpoint:
    """`--tracking-uri`, else `--endpoint` with the AIDP workspace, else `Endpoint.from_env()`."""
    if options.tracking_uri and options.endpoint:
        raise ConfigurationError(
            "--tracking-uri (MLflow) and --endpoint (AIDP) exclude each other; pass one"
        )
    if options.tracking_uri:
        return Endpoint.mlflow(options.tracking_uri, source="--tracking-uri")
    if options.endpoint:
        env = os.environ
        return Endpoint.aidp(
            env.get(AIDP_INSTANCE_ID, "").strip(),
            env.get(AIDP_WORKSPACE_KEY, "").strip(),
            endpoint=options.endpoint,
            user_principal=env.get(AIDP_USER_PRINCIPAL, "").strip() or None,
        )
    return Endpoint.from_env()


def build_auth(endpoint: Endpoint, options: ConnectionOptions) -> httpx.Auth | None:
    """`MLFLOW_TRACKING_AUTH`'s provider, else OCI request signing for AIDP, else for MLflow
    the environment's token/basic auth (or none): `aidp_metrics._connection.auth.endpoint_auth`."""
    from aidp_metrics._connection import auth

    return auth.endpoint_auth(
        endpoint, oci_mode=options.auth, config_file=options.config_file, profile=options.profile
    )


def build_client(options: ConnectionOptions, **kwargs: Any) -> TrackingClient:
    from aidp_metrics._connection.connect import connect

    endpoint = resolve_endpoint(options)
    return connect(endpoint, auth=build_auth(endpoint, options), **kwargs)


def client_for(args: argparse.Namespace) -> TrackingClient:
    """The client a command's parsed arguments ask for."""
    return build_client(ConnectionOptions.from_args(args))
