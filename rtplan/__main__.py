"""``python -m rtplan``: the same as the ``rtplan`` command."""

import sys

from rtplan.cli import main

__all__: list[str] = []

if __name__ == "__main__":
    sys.exit(main())
