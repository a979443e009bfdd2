"""The one registry type every unit registers in: metadata, errors, lazy entries, entry
points (object and module form, in a fresh interpreter with a package on its path) and
derived entries."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from fl_core.errors import ConfigError
from fl_core.registry import Registry, RegistryError, uri_scheme


def _registry() -> Registry:
    reg = Registry("widget", group="fedsilo.test-widgets-none")

    @reg.register("a", family="robust", compatible={"secagg": False})
    def a():
        """Widget A."""

    @reg.register("b", family="mean-based", compatible={"secagg": True, "topk": True})
    def b():
        pass

    return reg


def test_metadata_answers_the_checks():
    reg = _registry()
    assert reg.names() == ["a", "b"]
    assert reg.names(family="robust") == ["a"]
    assert reg.names(compatible="secagg") == ["b"]
    assert reg.names(incompatible="topk") == ["a"]
    assert reg.get("a").doc == "Widget A."
    assert not reg.get("a").supports("central-dp")  # undeclared = not compatible
    assert reg.get("a").origin == "add"


def test_unknown_and_clashing_names_are_errors_that_say_what_to_do():
    reg = _registry()
    with pytest.raises(RegistryError, match=r"unknown widget 'aa'\. Did you mean 'a'\?"):
        reg.get("aa")
    with pytest.raises(RegistryError, match="registered twice"):
        reg.add("a", lambda: None)
    reg.add("a", reg["a"])  # the same object again: a no-op
    with pytest.raises(ConfigError, match=r"run-config 'x\.widget' = 'aa' needs widget 'aa'"):
        reg.for_config("aa", key="x.widget", value="aa", hint="Install it.")


def test_lazy_entries_import_on_first_use_and_name_a_broken_provider():
    reg = Registry("store", group="fedsilo.test-stores-none", lazy=True)
    reg.add_lazy("json", "json:dumps")
    reg.add_lazy("broken", "no_such_module_xyz:thing")
    assert reg.get("json").obj("x") == '"x"'
    with pytest.raises(RegistryError, match="no_such_module_xyz:thing, which failed to import"):
        reg.get("broken")


def test_a_source_derives_entries_from_another_registry():
    rules = _registry()
    strategies = Registry("strategy", group="fedsilo.test-strategies-none")

    def derive(reg):
        for entry in rules.entries():
            if not reg.registered(entry.name):
                reg.add(entry.name, (entry.obj,), family=entry.family)

    strategies.add_source(derive)
    assert strategies.names(family="robust") == ["a"]
    rules.add("c", lambda: None, family="robust")  # added later: still derived
    assert strategies.names(family="robust") == ["a", "c"]


def test_entry_points_register_objects_with_their_metadata_and_modules(tmp_path):
    """A package installed on the path (its dist-info declares the entry points): an
    object entry point carries its metadata via ``describe``; a module entry point
    registers on import; a module that registers nothing is an error naming it."""
    pkg = tmp_path / "widgetpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        textwrap.dedent(
            """
            from fl_core.registry import describe

            @describe(family="robust", compatible={"secagg": False})
            def fancy():
                "A fancy widget."
            """
        )
    )
    (pkg / "mod.py").write_text("from __main__ import REG\nREG.add('viamodule', len)\n")
    info = tmp_path / "widgetpkg-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: widgetpkg\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[fedsilo.test-widgets]\nfancy = widgetpkg:fancy\nviamodule = widgetpkg.mod\n"
        "[fedsilo.test-broken]\nghost = widgetpkg.mod\n"
    )
    code = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        from fl_core.registry import Registry, RegistryError
        REG = Registry("widget", group="fedsilo.test-widgets")
        e = REG.get("fancy")
        print(e.family, e.supports("secagg"), e.origin, e.doc)
        print("viamodule" in REG, REG["viamodule"] is len)
        bad = Registry("widget", group="fedsilo.test-broken")
        try:
            bad.names()
        except RegistryError as exc:
            print("error:", exc)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path
    ).stdout.splitlines()
    assert out[0] == "robust False entry-point:widgetpkg A fancy widget."
    assert out[1] == "True True"
    assert "registered no widget named 'ghost'" in out[2]


def test_uri_scheme():
    assert uri_scheme("https://acct.blob.core.windows.net/c") == "https"
    assert uri_scheme("AZ://c/p") == "az"
    assert uri_scheme("/data/x.csv") == ""
    assert uri_scheme("user/dataset:config") == ""
