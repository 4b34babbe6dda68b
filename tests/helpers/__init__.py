"""Shared test helpers: ``mp`` (multi-process spawn), ``data`` (generated data with a planted
signal, from :func:`umec_torchrec.data.testing.planted_ctr`), ``models`` (small DLRMs)."""
