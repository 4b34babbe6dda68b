"""Click-log readers and batching into TorchRec ``Batch`` objects.

* :func:`load_data` (``spec`` string -> :class:`DataBundle` of train/valid/test :class:`CTRData`);
  the spec grammar is documented in :mod:`umec_torchrec.data.spec`;
* sources: :mod:`~umec_torchrec.data.criteo` (TSV), :mod:`~umec_torchrec.data.criteo_npy`,
  :mod:`~umec_torchrec.data.libsvm`, :mod:`~umec_torchrec.data.delimited`,
  :mod:`~umec_torchrec.data.synthetic`;
* :class:`DataOptions` (split, vocabulary, bad-line policy, csv schema), :class:`DataError`;
* :mod:`~umec_torchrec.data.split` (the three-way row split: :func:`~umec_torchrec.data.split.split_rows`);
* :func:`prepare_data` / ``prepared:DIR`` (:mod:`~umec_torchrec.data.prepared`): a source encoded once,
  then memory-mapped by every stage.
"""

from umec_torchrec.data.bundle import DataBundle
from umec_torchrec.data.dataset import CTRData
from umec_torchrec.data.errors import DataError
from umec_torchrec.data.loader import encode, load_data
from umec_torchrec.data.options import DataOptions
from umec_torchrec.data.prepared import load_prepared, prepare_data
from umec_torchrec.data.spec import DataSpec, parse_spec
from umec_torchrec.data.vocab import Vocabulary

__all__ = [
    "CTRData",
    "DataBundle",
    "DataError",
    "DataOptions",
    "DataSpec",
    "Vocabulary",
    "encode",
    "load_data",
    "load_prepared",
    "parse_spec",
    "prepare_data",
]
