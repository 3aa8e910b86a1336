"""circuitboard.leaderboard (see ARCHITECTURE.md)."""
