"""Other sources feeding a run from threads of their own: TensorBoard event files
and system metrics. They see a run only through the small protocols they declare."""
