"""``python -m tl_inversion.cli``: the same as the ``tl-inversion`` command."""

import sys

from tl_inversion.cli.app import main

if __name__ == "__main__":
    sys.exit(main())
