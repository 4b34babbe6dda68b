"""``python -m umec_torchrec.cli ...`` (and ``torchrun -m umec_torchrec.cli ...``) = ``umec ...``."""

import sys

from umec_torchrec.cli import main

if __name__ == "__main__":
    sys.exit(main())
