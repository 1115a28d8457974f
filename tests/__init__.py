"""Tests for aidp_metrics."""
