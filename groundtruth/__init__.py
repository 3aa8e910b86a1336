"""circuitboard.groundtruth (see ARCHITECTURE.md)."""
