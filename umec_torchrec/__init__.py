"""umec-torchrec: UMEC compression (features, tables and MLP neurons under resource
budgets) for TorchRec DLRM-style ranking models."""

__version__ = "0.1.0"
