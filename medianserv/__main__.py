"""``python -m medianserv``: the same as the ``medianserv`` command."""

import sys

from .cli import main

sys.exit(main())
