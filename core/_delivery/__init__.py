"""Sending: the process-wide worker threads, the sender that walks each run's
queue in order, the transports that send a chunk, and the one run opener."""
