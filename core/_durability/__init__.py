"""What survives the process: the spool writer that copies unsettled records to
the run's journal, and `sync`, which replays journals through the delivery stage."""
