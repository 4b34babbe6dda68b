"""TorchX components of umec-torchrec (:mod:`torchx_components.umec`: ``train``, ``compress``,
``finetune``), installed with the package; ``torchx run`` takes them by file path
(``torchx_components/umec.py:compress`` in a checkout, or the installed module's file)."""
