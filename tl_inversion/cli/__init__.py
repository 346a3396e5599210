"""The ``tl-inversion`` command line."""

from tl_inversion.cli.app import main

__all__ = ["main"]
