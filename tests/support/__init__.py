"""Test support: a real MLflow server, an AIDP gateway stand-in and OCI keys."""
