"""The caller's side: `Run` (validation on the training thread), what a new run
starts from, hyperparameters, the wiring of one run into the process-wide stages, and the
process hooks (exit, uncaught exceptions, fork)."""
