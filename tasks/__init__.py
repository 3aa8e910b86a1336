"""circuitboard.tasks (see ARCHITECTURE.md)."""
