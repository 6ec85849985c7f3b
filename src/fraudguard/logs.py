"""Logging set-up, called by entry points only (never at import time)."""

import logging
import os


def configure_logging(level: str | None = None) -> None:
    """Send INFO (or $FRAUDGUARD_LOG_LEVEL) log lines to stderr with a timestamp and logger name."""
    logging.basicConfig(
        level=(level or os.environ.get("FRAUDGUARD_LOG_LEVEL", "INFO")).upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # One line per HTTP call to the local Prefect API buries the pipeline's own messages.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
