"""Vertical federated learning: private set intersection of record ids (``psi``) and the
pure torch parts of split learning (``split``: bottom/top models, one split step)."""
