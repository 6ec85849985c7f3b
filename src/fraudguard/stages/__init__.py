"""DVC stages: one module per stage, each run as `python -m fraudguard.stages.<name>`."""

from fraudguard.shutdown import skip_final_collection

# Each stage is a short-lived `python -m fraudguard.stages.<name>` under `dvc repro`: it exits without the
# interpreter's final garbage collection (about 0.8 s of the evaluate stage's wall time on 2 cores).
skip_final_collection()
