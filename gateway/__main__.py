"""``python -m gateway``: the same as the ``connbridge-gateway`` command."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
