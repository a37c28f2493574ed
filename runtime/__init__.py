"""What every program's process shares at start-up: its settings, read from STOCKCORE_*
variables (runtime/settings.py), and structured logging (runtime/logs.py)."""
