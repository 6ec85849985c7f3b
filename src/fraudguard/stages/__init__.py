"""DVC stages: one module per stage, each run as `python -m fraudguard.stages.<name>`."""
