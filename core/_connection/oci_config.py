"""Read the OCI config file (`~/.oci/config`) without importing the `oci` SDK.

The format is INI; keys in `[DEFAULT]` are inherited by every other profile, which is
exactly configparser's DEFAULT section.
"""

from __future__ import annotations

import configparser
import os
from pathlib import Path

from aidp_metrics._env import OCI_CLI_CONFIG_FILE, OCI_CLI_PROFILE, OCI_CONFIG_FILE
from aidp_metrics._errors import ConfigurationError

# OCI request-signing modes, as aidp-cli names them (here, in a module that imports no
# httpx, so the CLI's --help stays fast).
AUTH_MODES = (
    "api_key",
    "security_token",
    "instance_principal",
    "resource_principal",
    "oke_workload_identity",
)

DEFAULT_CONFIG_FILE = "~/.oci/config"
DEFAULT_PROFILE = "DEFAULT"


def config_file_path() -> Path:
    """`OCI_CLI_CONFIG_FILE`, else `OCI_CONFIG_FILE`, else `~/.oci/config`."""
    raw = (
        os.environ.get(OCI_CLI_CONFIG_FILE)
        or os.environ.get(OCI_CONFIG_FILE)
        or DEFAULT_CONFIG_FILE
    )
    return Path(raw).expanduser()


def profile_name() -> str:
    """`OCI_CLI_PROFILE`, else `DEFAULT`."""
    return os.environ.get(OCI_CLI_PROFILE) or DEFAULT_PROFILE


def resolve_location(
    config_file: str | Path | None = None, profile: str | None = None
) -> tuple[Path, str]:
    """The config file and profile that `read_profile` would use for these arguments."""
    path = Path(config_file).expanduser() if config_file is not None else config_file_path()
    return path, profile or profile_name()


def read_profile(
    config_file: str | Path | None = None, profile: str | None = None
) -> dict[str, str]:
    """The keys of one profile, including those it inherits from `[DEFAULT]`."""
    path, name = resolve_location(config_file, profile)
    # interpolation=None: values such as pass phrases may contain '%'.
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with path.open(encoding="utf-8") as f:
            parser.read_file(f)
    except FileNotFoundError:
        raise ConfigurationError(
            f"OCI config file {path} not found; set OCI_CLI_CONFIG_FILE or create it with "
            "`oci setup config`"
        ) from None
    except OSError as e:
        raise ConfigurationError(f"cannot read OCI config file {path}: {e.strerror}") from None
    except configparser.Error as e:
        # The parser's message quotes the offending line, which may hold a secret.
        raise ConfigurationError(
            f"OCI config file {path} is not a valid INI file ({type(e).__name__})"
        ) from None

    # configparser never reports DEFAULT as a section, so treat it as present when non-empty.
    available = ([DEFAULT_PROFILE] if parser.defaults() else []) + parser.sections()
    if name not in available:
        listed = ", ".join(available) or "none"
        raise ConfigurationError(
            f"profile {name!r} not found in {path}; available: {listed}. "
            "Set OCI_CLI_PROFILE to choose another."
        )
    if name == DEFAULT_PROFILE:
        return dict(parser.defaults())
    return dict(parser.items(name))


def profile_region(config_file: str | Path | None = None, profile: str | None = None) -> str | None:
    """The profile's `region`, or None if the file, profile or key is missing."""
    try:
        return read_profile(config_file, profile).get("region") or None
    except ConfigurationError:
        return None
