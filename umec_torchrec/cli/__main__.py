"""``python -m umec_torchrec.cli ...`` (and ``torchrun -m umec_torchrec.cli ...``) = ``umec ...``.

Under torchrun the entry point is wrapped in TorchElastic's ``record``, so that an
unexpected exception's traceback lands in the worker's error file (torchrun's root cause);
a user error writes its one line there itself (:func:`umec_torchrec.cli.errors.report`).
"""

import os
import sys

if __name__ == "__main__":
    try:
        from umec_torchrec.cli import main

        if "TORCHELASTIC_ERROR_FILE" in os.environ:
            from torch.distributed.elastic.multiprocessing.errors import record

            main = record(main)
    except KeyboardInterrupt:  # Ctrl-C during the start-up imports: no traceback
        print("umec: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(main())
