"""AzureML adapter: launch a federation spec on Azure ML, or the same spec locally.

* :mod:`adapters.azureml.spec` — the federation spec (pydantic), :func:`~.spec.load_spec`;
* :mod:`adapters.azureml.jobs` — spec → ``azure-ai-ml`` Environment and ``command()`` jobs,
  :func:`~.jobs.render` to YAML;
* :mod:`adapters.azureml.client` — submit / status / logs / cancel with ``MLClient``;
* :mod:`adapters.azureml.local` — the ``local`` backend (SuperLink + SuperNodes on loopback);
* :mod:`adapters.azureml.runtime` — the wrapper that runs inside the jobs;
* :mod:`adapters.azureml.cli` — the ``fedsilo`` command line.

Nothing is imported here, so importing the package does not load the Azure SDK.
See docs/azureml.md.
"""
