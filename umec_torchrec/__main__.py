"""``python -m umec_torchrec ...`` = the ``umec`` command."""

import sys

from umec_torchrec.cli import main

if __name__ == "__main__":
    sys.exit(main())
