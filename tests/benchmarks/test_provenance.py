"""Generated docs name the commit they come from, and a dirty tree cannot write into docs/
unless asked (benchmarks/provenance.py), on a real git repository in a temp dir."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from benchmarks.efficiency_doc import write_section
from benchmarks.provenance import CodeVersion, code_version, guard_docs_write


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / "strategies").mkdir(parents=True)
    (root / "docs").mkdir()
    (root / "strategies" / "rule.py").write_text("X = 1\n")
    (root / "docs" / "report.md").write_text("old\n")
    _git(root, "init", "-q")
    _git(root, "add", ".")
    _git(root, "commit", "-q", "-m", "init")
    return root


def test_a_clean_tree_names_its_commit_and_may_write_docs(repo):
    code = code_version(root=repo)
    assert code.commit == _git(repo, "rev-parse", "--short=12", "HEAD")
    assert not code.dirty and code.short == code.commit
    assert code.label() == f"commit `{code.commit}`"
    guard_docs_write(repo / "docs" / "report.md", code, root=repo)  # no exit


def test_a_regenerated_doc_does_not_make_the_tree_dirty(repo):
    (repo / "docs" / "report.md").write_text("new figures\n")
    assert not code_version(root=repo).dirty


@pytest.mark.parametrize("change", ["edit", "untracked"])
def test_uncommitted_code_refuses_docs_but_not_other_outputs(repo, tmp_path, capsys, change):
    if change == "edit":
        (repo / "strategies" / "rule.py").write_text("X = 2\n")
        name = "strategies/rule.py"
    else:
        (repo / "strategies" / "new_rule.py").write_text("Y = 1\n")
        name = "strategies/new_rule.py"
    code = code_version(root=repo)
    assert code.dirty and code.uncommitted == (name,) and code.short.endswith("+dirty")
    with pytest.raises(SystemExit) as exc:
        guard_docs_write([tmp_path / "elsewhere.md", repo / "docs" / "report.md"], code, repo)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "docs/report.md" in err and name in err and "--allow-dirty" in err
    guard_docs_write(tmp_path / "elsewhere.md", code, root=repo)  # outside docs/: allowed

    forced = code_version(allow_dirty=True, root=repo)
    guard_docs_write(repo / "docs" / "report.md", forced, root=repo)  # asked for: allowed
    label = forced.label()
    assert f"`{name}`" in label and "--allow-dirty" in label and forced.commit in label


def test_outside_git_nothing_may_be_written_into_docs(tmp_path):
    (tmp_path / "docs").mkdir()
    code = code_version(root=tmp_path)
    assert code.commit is None and code.dirty
    with pytest.raises(SystemExit):
        guard_docs_write(tmp_path / "docs" / "x.md", code, root=tmp_path)


def test_the_record_round_trips_and_a_section_names_its_commit(tmp_path):
    code = CodeVersion("0123456789ab", ("fl_app/x.py",), allow_dirty=True)
    assert CodeVersion.from_json(code.to_json()) == code
    assert CodeVersion.from_json({"commit": "ab", "uncommitted": None}).dirty  # unknown state
    doc = tmp_path / "efficiency.md"
    write_section("scale", "| table |", doc, CodeVersion("0123456789ab", ()))
    text = doc.read_text()
    assert "| table |\n\n_Generated from commit `0123456789ab`._" in text
