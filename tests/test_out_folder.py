"""`--out` never deletes or replaces a file racksim did not write (issue 18, item 4)."""

import copy
import json

import pytest

from conftest import BASE
from sim.results.write import RUN_MARKER
from test_bad_input import run_cli


@pytest.fixture
def short(write_yaml):
    d = copy.deepcopy(BASE)
    d["workload"] = {**d["workload"], "duration_s": 0.1, "warmup_s": 0.02}
    return write_yaml(d)


def user_folder(path):
    """`mkdir -p keep/sub && echo x > keep/notes.txt`"""
    (path / "sub").mkdir(parents=True)
    (path / "notes.txt").write_text("x\n")
    (path / "sub" / "data.csv").write_text("a,b\n")
    return path


def untouched(path):
    return (path / "notes.txt").read_text() == "x\n" and \
        (path / "sub" / "data.csv").read_text() == "a,b\n"


def test_run_refuses_a_folder_of_user_files(short, tmp_path, monkeypatch, capsys):
    keep = user_folder(tmp_path / "keep")
    code, out, err = run_cli(monkeypatch, capsys, "run", short, "--out", keep, "--no-plots")
    assert code == 2 and "Traceback" not in err + out
    assert f"command line: --out: {keep}/ holds files racksim did not write" in err
    assert "notes.txt" in err and "sub/" in err and "--force" in err
    assert untouched(keep) and sorted(p.name for p in keep.iterdir()) == ["notes.txt", "sub"]


@pytest.mark.parametrize("where", [".", "..", "/", "a-file", "a-file/below"])
def test_run_refuses_cwd_root_and_files(where, short, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a-file").write_text("mine\n")
    code, out, err = run_cli(monkeypatch, capsys, "run", short, "--out", where, "--force")
    assert code == 2 and "Traceback" not in err + out
    assert err.startswith("command line: --out:") and "Fix:" in err
    assert (tmp_path / "a-file").read_text() == "mine\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", short.name]


def test_a_run_folder_is_replaced_whole(short, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    assert run_cli(monkeypatch, capsys, "run", short, "--out", out)[0] in (0, None)
    assert (out / "latency_cdf.png").exists() and (out / RUN_MARKER).exists()
    listed = json.loads((out / RUN_MARKER).read_text())["files"]
    assert "summary.json" in listed and "latency_cdf.png" in listed
    (out / "report.html").write_text("<html></html>")   # as `racksim report` leaves it
    code, _, err = run_cli(monkeypatch, capsys, "run", short, "--out", out, "--no-plots")
    assert code in (0, None), err
    names = {p.name for p in out.iterdir()}
    assert "summary.json" in names and "latency_cdf.png" not in names, "replaced whole"
    assert "report.html" not in names


def test_a_run_folder_holding_a_user_file_is_refused(short, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    assert run_cli(monkeypatch, capsys, "run", short, "--out", out, "--no-plots")[0] in (0, None)
    (out / "my-notes.md").write_text("keep me\n")
    code, _, err = run_cli(monkeypatch, capsys, "run", short, "--out", out, "--no-plots")
    assert code == 2 and "(my-notes.md)" in err
    assert (out / "my-notes.md").read_text() == "keep me\n"


def test_force_writes_beside_user_files(short, tmp_path, monkeypatch, capsys):
    keep = user_folder(tmp_path / "keep")
    (keep / "summary.json").write_text("{}")   # a same-named file is replaced
    code, _, err = run_cli(monkeypatch, capsys, "run", short, "--out", keep, "--no-plots",
                           "--force")
    assert code in (0, None), err
    assert untouched(keep)
    assert json.loads((keep / "summary.json").read_text())["requests_arrived"] >= 0
    listed = json.loads((keep / RUN_MARKER).read_text())["files"]
    assert "notes.txt" not in listed and "summary.json" in listed
    code, _, err = run_cli(monkeypatch, capsys, "run", short, "--out", keep, "--no-plots")
    assert code == 2 and "notes.txt" in err, "the user's files are never claimed as ours"


def test_sweep_refuses_user_folder_and_resumes_its_own(short, tmp_path, monkeypatch, capsys):
    keep = user_folder(tmp_path / "keep")
    sweep = ["sweep", short, "--set", "layout.expert_parallel=4,8"]
    code, _, err = run_cli(monkeypatch, capsys, *sweep, "--out", keep)
    assert code == 2 and "holds files racksim did not write" in err
    assert untouched(keep) and not (keep / "points").exists()
    code, _, err = run_cli(monkeypatch, capsys, *sweep, "--out", keep, "--force")
    assert code in (0, None), err
    assert untouched(keep) and len(list((keep / "points").glob("*.json"))) == 2
    code, _, err = run_cli(monkeypatch, capsys, *sweep, "--out", keep)
    assert code in (0, None), "a sweep folder is resumed, not refused"


def test_compare_refuses_user_folder(short, tmp_path, monkeypatch, capsys):
    keep = user_folder(tmp_path / "keep")
    code, _, err = run_cli(monkeypatch, capsys, "compare", short, "--hardware", "hgx-h100",
                           "--out", keep)
    assert code == 2 and "holds files racksim did not write" in err and untouched(keep)
    assert sorted(p.name for p in keep.iterdir()) == ["notes.txt", "sub"]


def test_a_run_folder_from_before_the_marker_is_still_ours(short, tmp_path, monkeypatch,
                                                           capsys):
    """`make run` into an out/default that an earlier racksim wrote (no marker) replaces it;
    the same names holding a user's own summary.json are refused."""
    out = tmp_path / "run"
    assert run_cli(monkeypatch, capsys, "run", short, "--out", out)[0] in (0, None)
    (out / RUN_MARKER).unlink()
    code, _, err = run_cli(monkeypatch, capsys, "run", short, "--out", out, "--no-plots")
    assert code in (0, None), err
    assert not (out / "latency_cdf.png").exists() and (out / RUN_MARKER).exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "summary.json").write_text('{"my": "numbers"}')
    code, _, err = run_cli(monkeypatch, capsys, "run", short, "--out", mine, "--no-plots")
    assert code == 2 and "summary.json" in err
    assert (mine / "summary.json").read_text() == '{"my": "numbers"}'
