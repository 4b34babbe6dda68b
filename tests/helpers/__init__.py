"""Shared test helpers: ``mp`` (multi-process spawn), ``programs`` (an exported program in a fresh
interpreter), ``umec_steps`` (UMEC steps and logits), ``data`` (generated data with a planted
signal, from :func:`umec_torchrec.data.testing.planted_ctr`), ``models`` (small DLRMs)."""
