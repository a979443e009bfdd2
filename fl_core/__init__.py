"""The bottom layer every other package may import, and that imports none of them.

It holds what strategies, tasks, the app and the adapters share: the run-config error
(:mod:`fl_core.errors`), seed derivation (:mod:`fl_core.seeding`), the keys of the
records our messages carry (:mod:`fl_core.records`), the base of every run-config section
(:mod:`fl_core.config`) and the registries units add themselves to
(:mod:`fl_core.registry`). The layer contracts are in ``[tool.importlinter]`` of
pyproject.toml and checked by ``lint-imports`` in ``.ci/run``.
"""
