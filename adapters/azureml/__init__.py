"""AzureML adapter: launch a federation spec on Azure ML.

* :mod:`adapters.azureml.spec` — the AzureML part of the federation spec (orchestrator,
  silo computes / workspaces / identities / data, network, provisioning) on top of the
  backend-neutral :mod:`adapters.federation.spec`; :func:`~.spec.load_spec`;
* :mod:`adapters.azureml.jobs` — spec → ``azure-ai-ml`` Environment and ``command()`` jobs,
  :func:`~.jobs.render` to YAML;
* :mod:`adapters.azureml.client` — submit / status / logs / cancel with ``MLClient``;
* :mod:`adapters.azureml.backend` — the ``azureml`` launch backend (:mod:`adapters.backends`);
* :mod:`adapters.azureml.runtime` — the wrapper that runs inside the jobs;
* :mod:`adapters.azureml.provision`, :mod:`adapters.azureml.silo_kit` — infrastructure and
  external silos.

The ``fedsilo`` command line is :mod:`adapters.cli`; the ``local`` backend is
:mod:`adapters.local`. Nothing is imported here, so importing the package does not load the
Azure SDK. See docs/azureml.md.
"""
