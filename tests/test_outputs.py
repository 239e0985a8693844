"""The output-path rule: edgeopt replaces only its own outputs, never a user's files, the current
directory or an input; it leaves nothing outside its output, also on SIGTERM."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from _support import EDGEOPT_BIN, REPO
from edgeopt.artifact import finalize, load_artifact, write_artifact
from edgeopt.errors import ConfigError
from edgeopt.outputs import check_output, remove_stale_siblings


def cli(*args, cwd: Path | None = None, timeout: int = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    e = {**os.environ, "EDGEOPT_QUIET": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    e.pop("EDGEOPT_DEBUG", None)
    return subprocess.run([EDGEOPT_BIN, *map(str, args)], capture_output=True, text=True, env=e, cwd=cwd, timeout=timeout)


def refused(proc: subprocess.CompletedProcess, *words: str) -> str:
    """Exit 2, one 'error:' line naming the problem, nothing on stdout, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])
    assert "Traceback" not in proc.stderr
    return lines[0]


def snapshot(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): (p.read_bytes() if p.is_file() else b"<dir>") for p in sorted(d.rglob("*"))}


def user_folder(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "notes.txt").write_text("my notes\n")
    (d / "sub").mkdir(exist_ok=True)
    (d / "sub" / "thesis.tex").write_text("\\section{Intro}\n")
    return d


# ---------------------------------------------------------------------------------------------
# the rule, in the library
# ---------------------------------------------------------------------------------------------

def test_new_and_empty_paths_are_fine(tmp_path):
    assert check_output(tmp_path / "new") == (tmp_path / "new").resolve()
    (tmp_path / "empty").mkdir()
    assert check_output(tmp_path / "empty") == (tmp_path / "empty").resolve()


def test_refuses_file_folder_cwd_and_inputs(tmp_path, monkeypatch, cls_onnx):
    user = user_folder(tmp_path / "work")
    monkeypatch.chdir(user / "sub")
    with pytest.raises(ConfigError, match="is the current directory"):
        check_output(".")
    with pytest.raises(ConfigError, match="contains the current directory"):
        check_output(user)
    with pytest.raises(ConfigError, match="is an existing file"):
        check_output(user / "notes.txt")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "a.txt").write_text("x")
    with pytest.raises(ConfigError, match="not an edgeopt artifact"):
        check_output(tmp_path / "other")
    # an artifact may be replaced, but not when it is the input, contains it or lies inside it
    with pytest.raises(ConfigError, match="is an input"):
        check_output(cls_onnx.path, cls_onnx)
    with pytest.raises(ConfigError, match="contains an input"):
        check_output(cls_onnx.path.parent, cls_onnx)
    with pytest.raises(ConfigError, match="lies inside the input"):
        check_output(cls_onnx.path / "sub", cls_onnx)
    assert check_output(cls_onnx.path) == cls_onnx.path


def test_a_folder_with_a_foreign_manifest_is_not_an_artifact(tmp_path):
    d = tmp_path / "site"
    d.mkdir()
    (d / "manifest.json").write_text(json.dumps({"name": "my web app", "icons": []}))
    with pytest.raises(ConfigError, match="not an edgeopt artifact"):
        check_output(d)


def _write(out: Path, manifest, payload: str = "new", fail: bool = False):
    with write_artifact(out) as tmp:
        (tmp / "model.onnx").write_text(payload)
        if fail:
            raise RuntimeError("boom")
        finalize(tmp, manifest)


def test_replacing_an_artifact_is_atomic_and_a_failure_keeps_the_old_one(tmp_path, cls_onnx):
    out = tmp_path / "art"
    _write(out, cls_onnx.manifest, "first")
    assert (out / "model.onnx").read_text() == "first"
    with pytest.raises(RuntimeError):
        _write(out, cls_onnx.manifest, "second", fail=True)
    assert (out / "model.onnx").read_text() == "first"
    _write(out, cls_onnx.manifest, "third")
    assert (out / "model.onnx").read_text() == "third"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]  # no temporary or backup siblings


def test_something_appearing_at_the_output_during_the_stage_is_kept(tmp_path, cls_onnx):
    out = tmp_path / "art"
    with pytest.raises(ConfigError, match="not an edgeopt artifact"):
        with write_artifact(out) as tmp:
            out.mkdir()
            (out / "precious.txt").write_text("keep me")
            finalize(tmp, cls_onnx.manifest)
    assert (out / "precious.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]


def test_stale_temporary_siblings_of_killed_runs_are_removed(tmp_path, cls_onnx):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".art.tmp-{dead.pid}-abcd1234"
    stale.mkdir()
    (stale / "model.onnx").write_text("half")
    stale_backup = tmp_path / f".art.old-{dead.pid}-xyz"
    stale_backup.mkdir()
    live = tmp_path / f".art.tmp-{os.getppid()}-live"  # a running process's: not ours to remove
    live.mkdir()
    other = tmp_path / f".other.tmp-{dead.pid}-abcd1234"  # another output's: not this one's
    other.mkdir()
    _write(tmp_path / "art", cls_onnx.manifest)
    assert not stale.exists() and not stale_backup.exists()
    assert live.exists() and other.exists()
    assert remove_stale_siblings(tmp_path / "other") == [other]


# ---------------------------------------------------------------------------------------------
# the rule, through the CLI, for every command that writes
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["cwd", "folder", "file", "input", "parent-of-input"])
def test_export_refuses_to_overwrite(where, tmp_path, tiny_text_classifier):
    import shutil

    model = tmp_path / "ckpt"
    shutil.copytree(tiny_text_classifier, model)
    user = user_folder(tmp_path / "home")
    target = {"cwd": ".", "folder": user / "sub", "file": user / "notes.txt", "input": model, "parent-of-input": tmp_path}[where]
    before = snapshot(tmp_path)
    proc = cli("export", model, "-o", target, cwd=user)
    line = refused(proc)
    assert "new folder" in line or "outside" in line, line
    assert snapshot(tmp_path) == before  # nothing changed, nothing added


def test_every_writing_command_refuses_a_user_folder(tmp_path, tiny_text_classifier, cls_onnx, text_jsonl):
    user = user_folder(tmp_path / "mine")
    before = snapshot(user)
    adapter = tmp_path / "adapter"  # merge checks the output before reading the adapter weights
    commands = [
        ("export", tiny_text_classifier),
        ("quantize", cls_onnx.path, "--ptq", "dynamic"),
        ("quantize", tiny_text_classifier, "--qat", "--data", text_jsonl),
        ("prune", tiny_text_classifier, "--sparsity", "0.3"),
        ("distill", tiny_text_classifier, "--data", text_jsonl, "--student-layers", "1"),
    ]
    for args in commands:
        refused(cli(*args, "-o", user), str(user.name))
    refused(cli("merge", tiny_text_classifier, "--adapter", adapter, "-o", user))
    assert snapshot(user) == before


def test_cli_replaces_its_own_artifact(tmp_path, tiny_text_classifier):
    out = tmp_path / "onnx"
    for _ in range(2):
        proc = cli("export", tiny_text_classifier, "-o", out, "--json")
        assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["artifact"] == str(out) and summary["format"] == "onnx"
    assert load_artifact(out).manifest.format == "onnx"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["onnx"]


def test_bench_reports_are_never_written_over_user_files(tmp_path, cls_onnx):
    user = user_folder(tmp_path / "u")
    (user / "bench.md").write_text("# my own notes\n")
    before = snapshot(user)
    refused(cli("bench", cls_onnx.path, "--report", user / "bench.md", "--runs", "1"), "bench.md")
    refused(cli("bench", cls_onnx.path, "--json-out", user / "notes.txt", "--runs", "1"), "notes.txt")
    refused(cli("bench", cls_onnx.path, "--json-out", user / "sub", "--runs", "1"), "is a folder")
    refused(cli("bench", cls_onnx.path, "--json-out", cls_onnx.path / "r.json", "--runs", "1"), "inside the input")
    assert snapshot(user) == before
    # its own reports it replaces
    out = tmp_path / "reports"
    for _ in range(2):
        proc = cli("bench", cls_onnx.path, "--report", out / "r.md", "--json-out", out / "r.json", "--runs", "1",
                   "--warmup", "0", "--batch-sizes", "1")
        assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["r.json", "r.md", "r.png"]


def test_recipe_workdir_must_be_new_empty_or_a_workdir(tmp_path, tiny_text_classifier):
    user = user_folder(tmp_path / "project")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(textwrap.dedent(f"""\
        name: r
        model: {tiny_text_classifier}
        workdir: project
        stages:
          - {{name: onnx, kind: export}}
        """))
    before = snapshot(user)
    refused(cli("run", recipe), "project")
    assert snapshot(user) == before
    recipe.write_text(recipe.read_text().replace("workdir: project", "workdir: runs"))
    (tmp_path / "runs").mkdir()  # an empty folder is fine
    proc = cli("run", recipe, "--json")
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    assert [s["name"] for s in res["stages"]] == ["onnx"] and res["stages"][0]["format"] == "onnx"
    proc = cli("run", recipe, "--json")  # its own workdir: cached
    assert proc.returncode == 0 and json.loads(proc.stdout)["stages"][0]["cached"] is True
    # a user's folder where a stage's output would go is refused before any stage runs
    shutil_rm = tmp_path / "runs" / "onnx"
    import shutil

    shutil.rmtree(shutil_rm)
    user_folder(shutil_rm)
    refused(cli("run", recipe, "--force"), "onnx")
    assert (shutil_rm / "notes.txt").is_file()


# ---------------------------------------------------------------------------------------------
# nothing outside the output, also on SIGTERM
# ---------------------------------------------------------------------------------------------

def test_quantize_writes_nothing_in_the_current_directory(tmp_path, cls_onnx, text_jsonl):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    for args in (("--ptq", "dynamic"), ("--ptq", "static", "--calib", text_jsonl)):
        out = tmp_path / f"int8-{args[1]}"
        proc = cli("quantize", cls_onnx.path, "-o", out, *args, cwd=cwd, env={"TMPDIR": str(tmpdir)})
        assert proc.returncode == 0, proc.stderr
        assert list(cwd.iterdir()) == [], [p.name for p in cwd.iterdir()]
        assert list(tmpdir.iterdir()) == [], [p.name for p in tmpdir.iterdir()]
        assert not [p for p in out.rglob("*") if "sym_shape" in p.name or p.name.endswith(".onnx.data")]


def test_sigterm_during_a_stage_removes_its_temporary_folder(tmp_path, tiny_text_classifier):
    """`docker stop` sends SIGTERM: a stage killed while its temporary folder exists cleans it up."""
    out = tmp_path / "onnx"
    env = {**os.environ, "EDGEOPT_QUIET": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([EDGEOPT_BIN, "export", str(tiny_text_classifier), "-o", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 120
    while not list(tmp_path.glob(".onnx.tmp-*")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert list(tmp_path.glob(".onnx.tmp-*")), "the export never created its temporary folder"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "Traceback" not in err and "terminated" in err
    assert list(tmp_path.iterdir()) == [], [p.name for p in tmp_path.iterdir()]


def test_sigterm_while_the_temporary_folder_exists(tmp_path, cls_onnx):
    """The library itself (no CLI) cleans up on SIGTERM: a stage is killed while writing."""
    out = tmp_path / "art"
    script = textwrap.dedent(f"""\
        import os, signal, sys, time
        sys.path.insert(0, {str(REPO)!r})
        from edgeopt.artifact import write_artifact
        with write_artifact({str(out)!r}) as tmp:
            (tmp / "model.onnx").write_text("partial")
            print(tmp, flush=True)
            time.sleep(60)
        """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    tmp = Path(proc.stdout.readline().strip())
    assert tmp.is_dir() and tmp.name.startswith(".art.tmp-")
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)
    assert proc.returncode == 143
    assert list(tmp_path.iterdir()) == []


def test_quantize_pre_process_leaves_nothing_in_the_current_directory(tmp_path, monkeypatch):
    """ONNX Runtime's symbolic shape inference, when it gives up (here: two batch axes it may not
    merge), saves sym_shape_infer_temp.onnx into the current directory; quantize must not let it."""
    import numpy as np
    import onnx
    from onnx import TensorProto
    from onnx import helper as h
    from onnx import numpy_helper

    from edgeopt.stages.quantize import _pre_process

    w = numpy_helper.from_array(np.random.default_rng(0).random((4, 4), dtype=np.float32), "W")
    graph = h.make_graph([h.make_node("MatMul", ["X", "W"], ["XW"]), h.make_node("Add", ["XW", "Y"], ["Z"])], "g",
                         [h.make_tensor_value_info("X", TensorProto.FLOAT, ["a", 4]),
                          h.make_tensor_value_info("Y", TensorProto.FLOAT, ["b", 4])],
                         [h.make_tensor_value_info("Z", TensorProto.FLOAT, None)], [w])
    src = tmp_path / "m.onnx"
    onnx.save(h.make_model(graph, opset_imports=[h.make_opsetid("", 17)]), src)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    out = tmp_path / "out"
    out.mkdir()
    _pre_process(src, out / "p.onnx", external=False)
    assert list(cwd.iterdir()) == []
    assert [p.name for p in out.iterdir()] == ["p.onnx"]
    assert Path.cwd() == cwd


# ---------------------------------------------------------------------------------------------
# found by trying to break the rule
# ---------------------------------------------------------------------------------------------

def test_files_that_merely_mention_edgeopt_are_not_reports(tmp_path):
    from edgeopt.outputs import is_report_file

    (tmp_path / "check.py").write_text('assert d["kind"] == "edgeopt bench report"\n')
    (tmp_path / "notes.md").write_text("Below is the edgeopt bench report for release 2; keep these notes.\n")
    (tmp_path / "other.json").write_text(json.dumps({"name": "x", "kind": "edgeopt bench report"}))
    for name in ("check.py", "notes.md", "other.json"):
        assert not is_report_file(tmp_path / name), name
        with pytest.raises(ConfigError):
            check_output(tmp_path / name, kind="file")


def test_an_artifact_folder_holding_user_files_is_not_replaced(tmp_path, cls_onnx):
    import shutil

    art = tmp_path / "a"
    shutil.copytree(cls_onnx.path, art)
    check_output(art)  # as written by edgeopt: replaceable
    (art / "results").mkdir()
    (art / "results" / "eval.csv").write_text("x\n")
    with pytest.raises(ConfigError, match="other than those its manifest.json lists"):
        check_output(art)


def test_refusals_that_used_to_come_late_or_unexpected(tmp_path, monkeypatch):
    (tmp_path / "userfile.txt").write_text("x")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        check_output(tmp_path / "userfile.txt" / "sub")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    with pytest.raises(ConfigError, match="cannot be resolved"):
        check_output(tmp_path / "loop")
    with pytest.raises(ConfigError, match="not a file name"):
        check_output(".", kind="file")
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()  # a deleted current directory: the rule still works
    assert check_output(tmp_path / "new") == tmp_path / "new"


def test_the_same_folder_under_another_name_is_still_the_input(tmp_path, cls_onnx):
    alias = tmp_path / "alias"
    alias.symlink_to(cls_onnx.path)
    with pytest.raises(ConfigError, match="is an input"):
        check_output(alias, cls_onnx)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if subprocess.run(["mount", "--bind", str(cls_onnx.path.parent), str(mnt)], capture_output=True).returncode != 0:
        pytest.skip("bind mounts need CAP_SYS_ADMIN")
    try:
        with pytest.raises(ConfigError, match="is an input"):
            check_output(mnt / cls_onnx.path.name, cls_onnx)
        empty = tmp_path / "vol"
        empty.mkdir()
        subprocess.run(["mount", "--bind", str(empty), str(empty)], check=True)
        try:
            with pytest.raises(ConfigError, match="mount point"):
                check_output(empty)
        finally:
            subprocess.run(["umount", str(empty)], check=True)
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_failed_command_removes_the_folders_it_created(tmp_path, cls_onnx, bad_jsonl):
    out = tmp_path / "new" / "a" / "b" / "out"
    proc = cli("quantize", cls_onnx.path, "-o", out, "--ptq", "static", "--calib", bad_jsonl)
    assert proc.returncode == 2, proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_recipe_stage_names_are_plain_folder_names(tmp_path, tiny_text_classifier):
    for name in ("../escaped", "/tmp/abs", ".", ".."):
        recipe = tmp_path / "r.yaml"
        recipe.write_text(f"name: r\nmodel: {tiny_text_classifier}\nworkdir: w\nstages:\n  - {{name: '{name}', kind: export}}\n")
        proc = cli("run", recipe, "--validate")  # a recipe's problems are listed together, one per line
        assert proc.returncode == 2 and "not a plain folder name" in proc.stderr and f"'{name}'" in proc.stderr, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.yaml"]


def test_commands_leave_nothing_in_tmpdir_and_ctrl_c_says_so(tmp_path, tiny_text_classifier):
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    proc = cli("export", tiny_text_classifier, "-o", tmp_path / "onnx", env={"TMPDIR": str(tmpdir)})
    assert proc.returncode == 0, proc.stderr
    assert list(tmpdir.iterdir()) == [], [p.name for p in tmpdir.iterdir()]  # torch's inductor cache folder...
    env = {**os.environ, "EDGEOPT_QUIET": "1", "TMPDIR": str(tmpdir)}
    # A shell that runs the suite in the background (`cmd &`, nohup) hands its children SIGINT ignored,
    # and Python then installs no Ctrl-C handler: give the child the default disposition, as a terminal would.
    p = subprocess.Popen([EDGEOPT_BIN, "export", str(tiny_text_classifier), "-o", str(tmp_path / "o2")],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while not list(tmp_path.glob(".o2.tmp-*")) and time.time() < deadline and p.poll() is None:
        time.sleep(0.02)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130 and "interrupted" in err, (p.returncode, err)
    assert not (tmp_path / "o2").exists() and not list(tmp_path.glob(".o2.*"))
    assert list(tmpdir.iterdir()) == []


def test_bench_table_shows_names_with_brackets(tmp_path, cls_onnx):
    import shutil

    art = tmp_path / "m[bold]"
    shutil.copytree(cls_onnx.path, art)
    proc = cli("bench", art, "--runs", "1", "--warmup", "0", "--batch-sizes", "1")
    assert proc.returncode == 0, proc.stderr
    assert "m[bold]" in proc.stdout


def test_outputs_are_readable_as_the_umask_says(tmp_path):
    """A file a library wrote through a private temporary file (0600, e.g. ONNX external data) is published
    with the umask's modes: a container's non-root server must read the model it was packaged with."""
    from edgeopt.outputs import staged_dir

    old = os.umask(0o022)
    try:
        with staged_dir(tmp_path / "out") as tmp:
            (tmp / "sub").mkdir(parents=True)
            (tmp / "manifest.json").write_text("{}")
            data = tmp / "sub" / "model.onnx.data"
            data.write_bytes(b"x")
            data.chmod(0o600)
            (tmp / "run.sh").write_text("#!/bin/sh\n")
            (tmp / "run.sh").chmod(0o700)
    finally:
        os.umask(old)
    out = tmp_path / "out"
    assert (out / "sub" / "model.onnx.data").stat().st_mode & 0o777 == 0o644
    assert (out / "run.sh").stat().st_mode & 0o777 == 0o755
    assert (out / "sub").stat().st_mode & 0o777 == 0o755 and out.stat().st_mode & 0o777 == 0o755
