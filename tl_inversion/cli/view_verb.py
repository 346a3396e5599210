"""``tl-inversion view``: the live preimage viewer (:mod:`tl_inversion.viewer.server`)."""

from __future__ import annotations

import argparse

__all__ = ["cmd_view", "populate_view"]


def populate_view(p: argparse.ArgumentParser) -> None:
    """Add the viewer's flags (defined once, in :mod:`tl_inversion.viewer.app_cli`)."""
    from tl_inversion.viewer.app_cli import add_arguments

    add_arguments(p)
    p.set_defaults(func=cmd_view, config_args=[])


def cmd_view(args: argparse.Namespace) -> int:
    """Serve the viewer until Ctrl-C (the embedded demo without ``--model`` / ``--bank``)."""
    from tl_inversion.viewer.app_cli import run

    run(args)
    return 0
