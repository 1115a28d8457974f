"""The environment variables MLflow's own framework integrations read (transformers'
`MLflowCallback`, accelerate's `MLflowTracker`), read here with the same meaning.

They are the frameworks' variables, not aidp-metrics' (those are in `aidp_metrics._env`):
each integration reads the ones its MLflow counterpart reads, with its precedence.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

from aidp_metrics._notice import notice

MLFLOW_TAGS = "MLFLOW_TAGS"  # a JSON object of tags
MLFLOW_NESTED_RUN = "MLFLOW_NESTED_RUN"  # true: a run nested in the active (user's) run
MLFLOW_FLATTEN_PARAMS = "MLFLOW_FLATTEN_PARAMS"  # transformers: flatten nested params with "."
MLFLOW_MAX_LOG_PARAMS = "MLFLOW_MAX_LOG_PARAMS"  # transformers: log at most this many params
HF_MLFLOW_LOG_ARTIFACTS = "HF_MLFLOW_LOG_ARTIFACTS"  # transformers: upload checkpoints

# transformers.utils.ENV_VARS_TRUE_VALUES; accelerate's str_to_bool also takes these.
_TRUE = frozenset({"1", "ON", "YES", "TRUE", "Y", "T"})
_FALSE = frozenset({"0", "OFF", "NO", "FALSE", "N", "F"})


def env_flag(name: str) -> bool | None:
    """A boolean variable: None when unset or blank, True for 1/on/yes/true, else False."""
    value = os.environ.get(name, "").strip().upper()
    if not value:
        return None
    if value not in _TRUE and value not in _FALSE:
        notice(f"aidp-metrics: {name}={os.environ[name]!r} is not true or false; read as false")
    return value in _TRUE


def env_int(name: str) -> int | None:
    """A count (`MLFLOW_MAX_LOG_PARAMS`): None unless it is all digits, as transformers."""
    value = os.environ.get(name, "").strip()
    return int(value) if value.isdigit() else None


def json_tags(text: str, source: str) -> dict[str, str] | None:
    """Tags from a JSON object (`MLFLOW_TAGS`, accelerate's `tags="..."`); None and one
    notice when it is not one (MLflow's integrations raise; training goes on here)."""
    try:
        tags = json.loads(text)
    except ValueError as exc:
        notice(f"aidp-metrics: {source} is not JSON ({exc}); its tags are not set")
        return None
    if not isinstance(tags, Mapping):
        notice(f"aidp-metrics: {source} is not a JSON object; its tags are not set")
        return None
    return {str(k): str(v) for k, v in tags.items()}


def env_tags() -> dict[str, str] | None:
    """`MLFLOW_TAGS`, when set."""
    text = os.environ.get(MLFLOW_TAGS, "").strip()
    return json_tags(text, MLFLOW_TAGS) if text else None
