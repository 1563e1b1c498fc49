"""``python -m fastlam.distributed``: the command line lives in fastlam.distributed.cli."""
import sys

from .cli import main

sys.exit(main())
