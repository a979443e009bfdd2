"""Adapters at the edge of the app: Azure Blob (data, checkpoints), AzureML (launch),
MLflow (tracking). The core imports them only lazily, through narrow hooks."""
