"""``python -m umec_torchrec.cli ...`` (and ``torchrun -m umec_torchrec.cli ...``) = ``umec ...``."""

import sys

if __name__ == "__main__":
    try:
        from umec_torchrec.cli import main
    except KeyboardInterrupt:  # Ctrl-C during the start-up imports: no traceback
        print("umec: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(main())
