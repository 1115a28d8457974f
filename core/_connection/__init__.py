"""The wire: where requests go (endpoint), the HTTP client with its retries and
typed errors, and authentication (OCI request signing, MLflow credentials and request-auth
providers)."""
