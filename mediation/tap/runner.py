"""``run_tap``: run one tap from its configuration (the seed form and ``tap run --config``).

The tap link (mediation/tap/link.py) fills this in; the command line
(mediation/cli/tap_config.py) only builds the :class:`TapConfig` and calls
here, so both ways of starting a tap run the same code.
"""

from __future__ import annotations

from pathlib import Path

from mediation.errors import UsageError
from mediation.tap.tapconfig import TapConfig


def run_tap(config: TapConfig, credentials_path: Path) -> int:
    """Capture on ``config.interface`` and feed the server until stopped.

    Args:
        config: the checked intercept configuration.
        credentials_path: the tap's ``NAME.tap`` credentials file.

    Returns:
        The process's exit status.

    Raises:
        UsageError: always, for now: the tap link is not built yet.
    """
    raise UsageError(
        "mediate tap",
        "the tap link is not built yet; the configuration was checked and is valid",
    )
