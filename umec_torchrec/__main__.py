"""``python -m umec_torchrec ...`` = the ``umec`` command (runs :mod:`umec_torchrec.cli.__main__`)."""

import runpy

if __name__ == "__main__":
    runpy.run_module("umec_torchrec.cli", run_name="__main__", alter_sys=True)
