"""Throw-away OCI credentials: RSA keys, a config file and a session token."""

from __future__ import annotations

import base64
import configparser
import hashlib
import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

TENANCY = "ocid1.tenancy.oc1..aaaatesttenancy"
USER = "ocid1.user.oc1..aaaatestuser"
REGION = "us-ashburn-1"
# Not DEFAULT: configparser (and so oci) copies DEFAULT keys into every other profile.
API_KEY_PROFILE = "API_KEY"
SECURITY_TOKEN_PROFILE = "SESSION"


@dataclass(frozen=True)
class OCICredentials:
    """One profile of a generated OCI config file."""

    config_file: Path
    profile: str
    key_id: str
    public_key_pem: bytes
    private_key_path: Path
    fingerprint: str
    token: str | None = None  # security-token profiles only


def generate_private_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_key_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def fingerprint(key: rsa.RSAPrivateKey) -> str:
    """OCI's key fingerprint: MD5 of the DER public key, as colon-separated lower-case hex."""
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    digest = hashlib.md5(der).hexdigest()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def write_private_key(key: rsa.RSAPrivateKey, path: Path) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    return path


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def make_security_token(lifetime: float = 3600.0, *, subject: str = USER) -> str:
    """An unsigned JWT-shaped token; ``oci``'s SecurityTokenContainer decodes it unverified."""
    now = int(time.time())
    header = {"alg": "RS256", "typ": "JWT", "kid": "test"}
    payload = {
        "sub": subject,
        "tenant": TENANCY,
        "iss": "authService.oracle.com",
        "ptype": "user",
        "iat": now,
        "exp": now + int(lifetime),
        "jti": uuid.uuid4().hex,
    }
    parts = [json.dumps(header).encode(), json.dumps(payload).encode(), b"not-a-real-signature"]
    return ".".join(_b64url(part) for part in parts)


def write_oci_config(
    directory: Path, *, region: str = REGION
) -> tuple[OCICredentials, OCICredentials]:
    """Write ``config`` with an API-key profile and a security-token profile (separate keys).

    Returns ``(api_key, security_token)`` credentials.
    """
    directory.mkdir(parents=True, exist_ok=True)
    config_file = directory / "config"
    api_key, session_key = generate_private_key(), generate_private_key()
    api_key_path = write_private_key(api_key, directory / "api_key.pem")
    session_key_path = write_private_key(session_key, directory / "session_key.pem")
    token = make_security_token()
    token_file = directory / "token"
    token_file.write_text(token)

    parser = configparser.ConfigParser(interpolation=None)
    parser[API_KEY_PROFILE] = {
        "user": USER,
        "fingerprint": fingerprint(api_key),
        "tenancy": TENANCY,
        "region": region,
        "key_file": str(api_key_path),
    }
    parser[SECURITY_TOKEN_PROFILE] = {
        "fingerprint": fingerprint(session_key),
        "key_file": str(session_key_path),
        "tenancy": TENANCY,
        "region": region,
        "security_token_file": str(token_file),
    }
    with config_file.open("w") as handle:
        parser.write(handle)

    api = OCICredentials(
        config_file=config_file,
        profile=API_KEY_PROFILE,
        key_id=f"{TENANCY}/{USER}/{fingerprint(api_key)}",
        public_key_pem=public_key_pem(api_key),
        private_key_path=api_key_path,
        fingerprint=fingerprint(api_key),
    )
    session = OCICredentials(
        config_file=config_file,
        profile=SECURITY_TOKEN_PROFILE,
        key_id=f"ST${token}",
        public_key_pem=public_key_pem(session_key),
        private_key_path=session_key_path,
        fingerprint=fingerprint(session_key),
        token=token,
    )
    return api, session
