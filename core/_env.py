"""Every environment variable aidp-metrics reads, with its meaning, and `first_env` to read them.

The names live here and nowhere else: other modules import the constants (a typo is then a
NameError, not a silently ignored setting). Values are read when they are needed, never at
import. docs/configuration.md lists exactly `VARIABLES` (a test keeps them equal).
"""

from __future__ import annotations

import os

VARIABLES: dict[str, str] = {}
"""Name -> one-line meaning, for every variable below, in the order they are defined."""


def _variable(name: str, meaning: str) -> str:
    VARIABLES[name] = meaning
    return name


# -- where requests go: AIDP ---------------------------------------------------------------
AIDP_INSTANCE_ID = _variable("AIDP_INSTANCE_ID", "AI Data Platform OCID; selects the AIDP endpoint")
AIDP_WORKSPACE_KEY = _variable("AIDP_WORKSPACE_KEY", "the AIDP workspace key")
AIDP_ENDPOINT = _variable("AIDP_ENDPOINT", "explicit AIDP service URL instead of the region's")
OCI_CLI_ENDPOINT = _variable("OCI_CLI_ENDPOINT", "the OCI CLI's name for AIDP_ENDPOINT")
OCI_CLI_REGION = _variable("OCI_CLI_REGION", "OCI region of the AIDP service URL")
AIDP_USER_PRINCIPAL = _variable("AIDP_USER_PRINCIPAL", "sent as the dh-user-principal header")

# -- OCI credentials (AIDP) ----------------------------------------------------------------
OCI_CLI_AUTH = _variable("OCI_CLI_AUTH", "OCI auth mode: api_key, security_token, ...")
OCI_CLI_CONFIG_FILE = _variable("OCI_CLI_CONFIG_FILE", "OCI config file (default ~/.oci/config)")
OCI_CONFIG_FILE = _variable("OCI_CONFIG_FILE", "the OCI SDK's name for OCI_CLI_CONFIG_FILE")
OCI_CLI_PROFILE = _variable("OCI_CLI_PROFILE", "profile in the OCI config file (default DEFAULT)")

# -- where requests go: MLflow, and its credentials -----------------------------------------
MLFLOW_TRACKING_URI = _variable("MLFLOW_TRACKING_URI", "MLflow tracking server, when no AIDP_*")
MLFLOW_TRACKING_TOKEN = _variable("MLFLOW_TRACKING_TOKEN", "Bearer token for MLflow")
MLFLOW_TRACKING_USERNAME = _variable("MLFLOW_TRACKING_USERNAME", "Basic auth user for MLflow")
MLFLOW_TRACKING_PASSWORD = _variable("MLFLOW_TRACKING_PASSWORD", "Basic auth password for MLflow")
MLFLOW_TRACKING_AUTH = _variable(
    "MLFLOW_TRACKING_AUTH", "an installed MLflow request-auth provider to sign with (aidp: ours)"
)

# -- which run -----------------------------------------------------------------------------
AIDP_RUN_ID = _variable("AIDP_RUN_ID", "attach to this run instead of starting one")
MLFLOW_RUN_ID = _variable("MLFLOW_RUN_ID", "MLflow's name for AIDP_RUN_ID")
AIDP_EXPERIMENT_NAME = _variable("AIDP_EXPERIMENT_NAME", "experiment of new runs")
MLFLOW_EXPERIMENT_NAME = _variable("MLFLOW_EXPERIMENT_NAME", "MLflow's AIDP_EXPERIMENT_NAME")

# -- delivery ------------------------------------------------------------------------------
AIDP_METRICS_SPOOL = _variable("AIDP_METRICS_SPOOL", "spool mode: on_failure, always or off")
AIDP_METRICS_DIR = _variable("AIDP_METRICS_DIR", "spool directory (default ./aidp-metrics)")
AIDP_METRICS_MODE = _variable("AIDP_METRICS_MODE", "offline: journal only, no network")
AIDP_METRICS_SYSTEM_METRICS = _variable(
    "AIDP_METRICS_SYSTEM_METRICS", "true/false: system metrics for runs without system_metrics="
)
MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING = _variable(
    "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING",
    "MLflow's switch, when AIDP_METRICS_SYSTEM_METRICS is unset",
)
AIDP_METRICS_WATCH = _variable(
    "AIDP_METRICS_WATCH",
    "gradients, parameters, all or false: norms a Transformers AIDPCallback logs without watch=",
)

# -- synonyms, first set wins --------------------------------------------------------------
RUN_ID_VARIABLES = (AIDP_RUN_ID, MLFLOW_RUN_ID)
EXPERIMENT_VARIABLES = (AIDP_EXPERIMENT_NAME, MLFLOW_EXPERIMENT_NAME)
SYSTEM_METRICS_VARIABLES = (AIDP_METRICS_SYSTEM_METRICS, MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING)


def first_env(names: tuple[str, ...]) -> str | None:
    """The value of the first of `names` that is set to something other than blanks, stripped."""
    for name in names:
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return None
