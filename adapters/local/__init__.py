"""The ``local`` launch backend: a federation spec as processes on this machine.

* :mod:`adapters.local.run` — :func:`~.run.run_local`: SuperLink + supervised SuperNodes on
  loopback, then ``flwr run`` (optionally with TLS and SuperNode authentication);
* :mod:`adapters.local.backend` — :class:`~.backend.LocalBackend`, registered as ``local``
  (submit, status, logs, cancel).

Depends only on the backend-neutral :mod:`adapters.federation` (never on adapters.azureml).
"""
