"""`python -m MotionSSIMLib ...`: the command line."""

import sys

from MotionSSIMLib.cli import main

if __name__ == "__main__":
    sys.exit(main())
