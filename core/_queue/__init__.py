"""What a run holds: its ordered in-memory queue with exact accounting, the
records in it, the spill index, the on-disk journal format, and the delivery options."""
