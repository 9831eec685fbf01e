"""``python -m zsec`` runs the ``zsec`` command."""

import sys

from .cli import main

sys.exit(main())
