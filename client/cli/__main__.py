"""``python -m reels.client.cli``: the same as the ``reels`` command."""

import sys

from reels.client.cli import main

sys.exit(main())
