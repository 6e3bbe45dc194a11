"""What every ``vmcrypt … serve`` command shares: the server's logging.

A server logs with timestamps at the level asked, on stderr — not the CLI's one-line
``warning: …`` handler that :func:`vmcrypt.cli.main.main` installs for short commands.
"""

from __future__ import annotations

import logging
import sys

from vmcrypt.exceptions import UsageError

__all__ = ["configure_server_logging"]


def configure_server_logging(log_level: str) -> None:
    """Log ``vmcrypt.*`` at ``log_level`` (debug, info, warning, error) to stderr."""
    level = getattr(logging, log_level.upper(), None)
    if not isinstance(level, int):
        raise UsageError(f"--log-level {log_level!r}: use debug, info, warning or error")
    logger = logging.getLogger("vmcrypt")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    logger.setLevel(level)
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
