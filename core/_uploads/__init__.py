"""Artifact uploads: a stage of their own beside the metric stream.

A logged file is snapshotted into the run's spool directory and recorded in the run's upload
journal before the call returns (`snapshot`, `ledger`); one process-wide thread uploads the
snapshots through MLflow's own artifact repositories (`store`), one file at a time, so a
multi-GB checkpoint never holds up the metrics (`stage`); `aidp-metrics sync` finishes
what a run left (`replay`). The run's lifecycle, failure policy (`retry.decide`) and
notices are the ones the metrics use.
"""
