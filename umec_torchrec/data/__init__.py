"""Click-log readers and batching (see :mod:`umec_torchrec.data.dataset`)."""

from umec_torchrec.data.dataset import CTRData

__all__ = ["CTRData"]
