"""Masking secrets in text meant for people: URLs, messages, server replies.

Every place that shows a URL, a configuration value or a server's message to a person
(exception messages, warnings, the CLI, doctor) goes through `redact` or `redact_url`.
A secret is replaced by `MARKER`, never shortened: a truncated token is still most of
a token. Imports nothing heavy, so errors and the endpoint can use it.

No logging filter is installed on httpx/httpcore: httpx logs each request's URL (INFO)
and httpcore (1.0) the response headers (DEBUG), never a request header or body, and our
URLs never hold credentials (`Endpoint` moves a URI's user:password into a credential).
tests/test_secrets.py checks this with every logger at DEBUG.
"""

from __future__ import annotations

import re

MARKER = "***"

# Characters that end a URL's userinfo when it is quoted or embedded in a message.
_STOP = r"\s/?#'\"<>\\"
# `scheme:` (any slashes) then userinfo up to the last `@` before the host: also catches
# typos (`htps://`, `http:/`) and a URL with no scheme at all (`alice:pw@host`).
_USERINFO = re.compile(rf"(?P<prefix>(?<![\w+.\-])[A-Za-z][\w+.\-]*:/*)(?P<userinfo>[^{_STOP}]+)@")
_LEADING_USERINFO = re.compile(rf"^(?P<prefix>)(?P<userinfo>[^{_STOP}:]+)@")
# Shapes of credentials a server or a library might echo back.
_TOKENS = (
    # OCI session-token key ids
    (re.compile(r"ST\$[\w\-.=+/]+"), "ST$" + MARKER),
    # JWTs: base64url header.payload[.signature]
    (re.compile(r"eyJ[\w\-]+\.[\w\-]+(?:\.[\w\-]*)?"), MARKER),
    # HTTP Authorization values (the scheme names are case-sensitive here so that prose
    # such as "basic (from MLFLOW_TRACKING_URI)" stays readable)
    (re.compile(r"\b(Bearer|Basic)\s+(?!\()[\w\-.~+/]+=*"), r"\1 " + MARKER),
    # PEM private keys, also when cut off before the END line
    (
        re.compile(
            r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(?:-----END [A-Z ]*PRIVATE KEY-----|$)", re.S
        ),
        MARKER,
    ),
    # password=..., pass_phrase = ..., MLFLOW_TRACKING_TOKEN=...
    (
        re.compile(
            r"(?i)(?<![a-z])(password|passwd|pass_phrase|passphrase|secret|token|key_content)"
            r"(\s*=\s*[\"']?)[^\s\"',;&]+"
        ),
        r"\1\2" + MARKER,
    ),
)


def redact(text: str) -> str:
    """`text` with URL passwords and anything shaped like a credential replaced by `MARKER`."""
    text = _USERINFO.sub(_mask_userinfo, text)
    for pattern, replacement in _TOKENS:
        text = pattern.sub(replacement, text)
    return text


def redact_url(url: str) -> str:
    """`url` (or something meant to be one) fit to show: `http://alice:***@host:5000`.

    Also masks userinfo at the very start of a value without a scheme (`token@host`).
    """
    return redact(_LEADING_USERINFO.sub(_mask_userinfo, url))


def _mask_userinfo(match: re.Match[str]) -> str:
    # `user:password` -> `user:***`; a lone name (often a token) -> `***`.
    user, colon, _ = match["userinfo"].partition(":")
    return f"{match['prefix']}{f'{user}:{MARKER}' if colon else MARKER}@"
