"""Test-only MLflow request-auth providers, installed as a distribution the test creates.

`install_providers(directory, entry_points)` writes a `.dist-info` directory (METADATA and
entry_points.txt under `mlflow.request_auth_provider`) into `directory`; put `directory` on
`sys.path` (or PYTHONPATH for a child process) and `importlib.metadata` (so MLflow's
registry and aidp-metrics) finds the providers, as if `pip install`ed.

`SessionTokenProvider` stands in for a third-party OCI plugin such as `oci-mlflow`: its
`requests` auth object is `oci`'s own SecurityTokenSigner for the profile named by
`TEST_PROVIDER_PROFILE` in `OCI_CLI_CONFIG_FILE`, so the AIDP gateway can verify that it
signed every request (keyId `ST$<token>`: the credential that must never be shown).
"""

from __future__ import annotations

import configparser
import os
from pathlib import Path
from typing import Any

DISTRIBUTION = "aidp-metrics-test-providers"
GROUP = "mlflow.request_auth_provider"
SESSION_TOKEN_PROVIDER = "test-session-token"
BROKEN_PROVIDER = "test-broken"
PROFILE_VARIABLE = "TEST_PROVIDER_PROFILE"


def install_providers(directory: Path, entry_points: dict[str, str]) -> Path:
    """A dist-info for `entry_points` (`name -> module:attr`) in `directory`; returns it."""
    info = directory / f"{DISTRIBUTION.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {DISTRIBUTION}\nVersion: 0.1\n", encoding="utf-8"
    )
    lines = [f"[{GROUP}]"] + [f"{name} = {target}" for name, target in entry_points.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return directory


ENTRY_POINTS = {
    SESSION_TOKEN_PROVIDER: "tests.support.auth_providers:SessionTokenProvider",
    BROKEN_PROVIDER: "tests.support.auth_providers:BrokenProvider",
}


class SessionTokenProvider:
    """MLflow's RequestAuthProvider interface; signs with an OCI session-token profile."""

    def get_name(self) -> str:
        return SESSION_TOKEN_PROVIDER

    def get_auth(self) -> Any:
        import oci

        parser = configparser.ConfigParser(interpolation=None)
        parser.read(os.environ["OCI_CLI_CONFIG_FILE"])
        profile = parser[os.environ.get(PROFILE_VARIABLE, "SESSION")]
        token = Path(profile["security_token_file"]).read_text().strip()
        key = oci.signer.load_private_key_from_file(profile["key_file"])
        return oci.auth.signers.SecurityTokenSigner(token, key)


class BrokenProvider:
    """Its credentials cannot be loaded; the error quotes a secret it must not leak."""

    def get_name(self) -> str:
        return BROKEN_PROVIDER

    def get_auth(self) -> Any:
        raise RuntimeError("cannot load credentials: password=hunter2-provider-secret")
