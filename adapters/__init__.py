"""Adapters at the edge of the app: Azure Blob (data, checkpoints), AzureML and the local
backend (launch), MLflow (tracking). They depend on the core, never the reverse: the core
finds them through its registries, wired in :mod:`adapters.app` (the composition root the
Flower components point at) or through entry points."""
