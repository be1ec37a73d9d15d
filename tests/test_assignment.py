"""Course-assignment mode (assignment.py): the student copy imports and runs, each of its graded tests fails by
NotImplementedError, the full copy passes them all, and the solution markers are well formed and graded."""
import os
import re
import subprocess
import sys

import pytest

import assignment
from tests.test_train import ROOT

MOST = sum(part["points"] for part in assignment.PARTS.values())  # the full score


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    out = tmp_path_factory.mktemp("assignment") / "student"
    assignment.make(str(out))
    return out


def test_student_copy_has_the_tracked_files_imports_and_runs(student):
    copied = {os.path.relpath(os.path.join(d, f), student) for d, _, files in os.walk(student) for f in files}
    assert copied == set(assignment.tracked_files(ROOT)) - set(assignment.INSTRUCTOR_ONLY)
    for command in (["-c", "import drope, fwpkm, repo, rope"], ["train.py", "--help"]):
        done = subprocess.run([sys.executable, *command], cwd=student, capture_output=True, text=True)
        assert done.returncode == 0, f"{command}: {done.stderr}"
    assert "usage: train.py" in done.stdout


def outcomes(graded):
    return {test: (ok, message) for tests in graded.values() for test, ok, message in tests}


def total_row(out):
    """(tests passed, tests, points, most points) in the total row of grade's table."""
    found = re.search(r"^total +(\d+) / (\d+) +([\d.]+) / (\d+)$", out, re.M)
    assert found, f"no total row in: {out}"
    return tuple(float(x) for x in found.groups())


def graded_count(graded):
    return sum(map(len, graded.values()))  # a test graded in two parts counts twice, as in the table


def test_every_graded_test_fails_on_the_student_copy_by_not_implemented_error(student, capsys):
    graded = assignment.grade(str(student))
    wrong = {test: message for test, (ok, message) in outcomes(graded).items()
             if ok or not message.startswith("NotImplementedError: ")}
    assert not wrong, f"graded tests that do not fail by NotImplementedError on the student copy: {wrong}"
    assert total_row(capsys.readouterr().out) == (0, graded_count(graded), 0, MOST)


def test_every_graded_test_passes_on_the_full_copy(capsys):
    graded = assignment.grade(ROOT)
    failed = {test: message for test, (ok, message) in outcomes(graded).items() if not ok}
    assert not failed, f"graded tests that fail on the full copy: {failed}"
    assert total_row(capsys.readouterr().out) == (graded_count(graded), graded_count(graded), MOST, MOST)


def test_markers_are_balanced_and_every_region_is_graded(student):
    regions = assignment.find_regions(ROOT, assignment.tracked_files(ROOT))  # ends the program on a bad marker
    assert sorted(r.part for found in regions.values() for r in found) == sorted(assignment.PARTS)
    assert all(part["tests"] for part in assignment.PARTS.values())
    # the student copy keeps the markers: stubbing it again changes nothing
    for path, found in assignment.find_regions(str(student), list(regions)).items():
        lines = assignment.read_lines(str(student), path)
        assert assignment.stubbed(path, lines, found) == "".join(lines)


def region_lines(*body):
    """A function whose body holds a region with the given lines (each a string, indented by the caller)."""
    return [line + "\n" for line in ("def f(x):", *body, "    return x")]


GOOD = region_lines("    # --- solution: double | twice x ---",
                    "    # | (in place)",
                    "    x = 2 * x",
                    "    # --- end ---")


def test_a_region_is_replaced_by_a_raise_with_its_hint():
    region, = assignment.parse_regions("f.py", GOOD)
    assert (region.part, region.hint, region.body) == ("double", "twice x (in place)", range(3, 4))
    text = assignment.stubbed("f.py", GOOD, [region])
    assert "    raise NotImplementedError('double: twice x (in place)')\n" in text and "2 * x" not in text
    with pytest.raises(NotImplementedError, match="double: twice x"):
        namespace = {}
        exec(text, namespace)
        namespace["f"](1)


@pytest.mark.parametrize("lines,error", [
    (region_lines("    # --- solution: a | b ---", "    # --- solution: c | d ---", "    x = 1", "    # --- end ---",
                  "    # --- end ---"), "f.py:3: a region starts inside the region opened at line 2"),
    (region_lines("    x = 1", "    # --- end ---"), "f.py:3: an end marker without a start"),
    (region_lines("    # --- solution: a | b ---", "    x = 1"), "f.py:2: a region without an end marker"),
    (region_lines("    # --- solution: a ---", "    x = 1", "    # --- end ---"), "f.py:2: .*needs a part name and a hint"),
    (region_lines("    # --- solution a | b ---", "    x = 1", "    # --- end ---"), "f.py:2: malformed marker"),
    (region_lines("    # --- solution: a | b ---", "    # --- end ---"), "f.py:2: region 'a' has no statements"),
])
def test_bad_markers_name_the_line(lines, error):
    with pytest.raises(SystemExit, match=f"error: {error}.*the format is"):
        assignment.parse_regions("f.py", lines)


def test_a_stub_must_parse_and_lie_inside_a_function():
    module_level = ["# --- solution: a | b ---\n", "x = 1\n", "# --- end ---\n"]
    with pytest.raises(SystemExit, match="not inside a function"):
        assignment.stubbed("f.py", module_level, assignment.parse_regions("f.py", module_level))
    half_statement = region_lines("    y = (1,", "    # --- solution: a | b ---", "         2)", "    # --- end ---")
    with pytest.raises(SystemExit, match="does not parse"):
        assignment.stubbed("f.py", half_statement, assignment.parse_regions("f.py", half_statement))


def test_parts_and_regions_must_match(monkeypatch):
    files = assignment.tracked_files(ROOT)
    monkeypatch.setitem(assignment.PARTS, "attention", dict(points=5, tests=["tests/test_model.py::test_x"]))
    with pytest.raises(SystemExit, match=r"parts in PARTS without a region: \['attention'\]"):
        assignment.find_regions(ROOT, files)
    monkeypatch.delitem(assignment.PARTS, "attention")
    monkeypatch.delitem(assignment.PARTS, "product topk")
    with pytest.raises(SystemExit, match=r"regions without tests: \['product topk'\]"):
        assignment.find_regions(ROOT, files)


def test_bad_directories_are_refused_in_one_line(tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine\n")
    with pytest.raises(SystemExit, match="taken exists and is not an empty directory"):
        assignment.make(str(tmp_path / "taken"))
    assert os.listdir(tmp_path / "taken") == ["notes.txt"] and sorted(os.listdir(tmp_path)) == ["taken"]
    with pytest.raises(SystemExit, match="has no tests/ directory"):
        assignment.grade(str(tmp_path / "taken"))
    with pytest.raises(SystemExit, match="is not a git checkout"):
        assignment.make(str(tmp_path / "out"), root=str(tmp_path / "taken"))
    # an unpacked archive inside another checkout: that checkout's files are not this copy's
    archive = tmp_path / "repo" / "archive"
    archive.mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(tmp_path / "repo")], check=True)
    with pytest.raises(SystemExit, match="archive is not a git checkout .* git init -q && git add -A"):
        assignment.make(str(tmp_path / "out"), root=str(archive))
    assert not (tmp_path / "out").exists()
