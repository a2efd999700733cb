"""Commands (placeholder until implemented)."""

COMMANDS: list = []
