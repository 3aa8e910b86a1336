"""circuitboard.methods (see ARCHITECTURE.md)."""
