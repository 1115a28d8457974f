"""Framework integrations. Each submodule imports its framework only when imported itself."""
