"""Course-assignment mode (assignment.py): the student copy holds no solution and ships the handout, each part is
graded alone with the instructor's tests (visible and hidden), failures come with their whole message, and the
solution markers are well formed and graded."""
import json
import os
import re
import shutil
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


def solve(directory, part):
    """Writes the reference statements of `part` into the copy in directory (a student solving that part)."""
    regions = assignment.find_regions(ROOT, assignment.tracked_files(ROOT))
    ref, = (r for found in regions.values() for r in found if r.part == part)
    mine, = (r for r in assignment.parse_regions(ref.path, assignment.read_lines(str(directory), ref.path))
             if r.part == part)
    solution = assignment.read_lines(ROOT, ref.path)[ref.body.start:ref.body.stop]
    solved = assignment.with_body(assignment.read_lines(str(directory), ref.path), mine, solution)
    with open(os.path.join(directory, ref.path), "w", encoding="utf-8") as f:
        f.write("".join(solved))


def test_student_copy_holds_no_solution_ships_the_handout_and_runs(student):
    copied = {os.path.relpath(os.path.join(d, f), student) for d, _, files in os.walk(student) for f in files}
    tracked = set(assignment.tracked_files(ROOT))
    assert copied == {p for p in tracked if not assignment.stays_behind(p)} and assignment.HANDOUT in copied
    assert not any(p.startswith(("results/", "tests/hidden/")) for p in copied)
    assert [p for p in copied if p.startswith("docs/")] == [assignment.HANDOUT]
    assert [p for p in copied if p.startswith("fast_paths/")] == ["fast_paths/__init__.py"]  # fast paths stay behind
    # no statement line of any solution (or of the fast paths) anywhere in the copy: what make checks, checked here
    # again from the regions of the instructor's files
    regions = assignment.find_regions(ROOT, sorted(tracked))
    lines = assignment.solution_lines(ROOT, regions)
    assert sum(v.startswith("part ") for v in lines.values()) >= 2 * len(assignment.PARTS)
    texts = assignment.student_texts(str(student))
    assert not assignment.find_leaks(texts, lines)
    for command in (["-c", "import drope, fwpkm, repo, rope"], ["train.py", "--help"]):
        done = subprocess.run([sys.executable, *command], cwd=student, capture_output=True, text=True)
        assert done.returncode == 0, f"{command}: {done.stderr}"
    assert "usage: train.py" in done.stdout


def test_make_refuses_a_copy_that_holds_a_solution(tmp_path, monkeypatch):
    leak = "    angle = pos.float()[..., None] * inv_freq  # copied\n"
    lines = {assignment.code_line(leak): "part 'rope angles'"}
    assert assignment.find_leaks({"notes.py": "x = 1\n" + leak}, lines) == \
        [("notes.py", 2, "part 'rope angles': 'angle = pos.float()[..., None] * inv_freq'")]
    # fast_paths/cpu.py computes the rotation another way, with lines of the solutions' and the kernels': shipping it
    # fails the build, and nothing is written
    monkeypatch.setattr(assignment, "STAY_BEHIND", tuple(p for p in assignment.STAY_BEHIND if p != "fast_paths/cpu.py"))
    with pytest.raises(SystemExit, match=r"would hold solutions .*fast_paths/cpu.py:\d+: "):
        assignment.make(str(tmp_path / "out"))
    assert os.listdir(tmp_path) == []


def outcomes(graded):
    return {test: (ok, message) for tests in graded.values() for test, ok, message in tests}


def total_row(out):
    """(tests passed, tests, points, most points) in the total row of grade's table."""
    found = re.search(r"^total +(\d+) / (\d+) +([\d.]+) / (\d+)$", out, re.M)
    assert found, f"no total row in: {out}"
    return tuple(float(x) for x in found.groups())


def test_each_part_is_graded_alone_with_the_instructors_tests(student, tmp_path, capsys):
    """One part solved, the rest stubbed, and the submission's own tests made to pass: that part gets full points,
    every other part zero, each of its tests failing by its NotImplementedError, printed whole."""
    submission = tmp_path / "submission"
    shutil.copytree(student, submission)
    solve(submission, "rope rotation")
    for path in ("tests/test_rope.py", "tests/test_drope.py"):  # a student's tests that pass whatever the code
        (submission / path).write_text("def test_angles_are_position_times_frequency_in_fp32():\n    pass\n")
    graded = assignment.grade(str(submission), json_path=str(tmp_path / "score.json"))
    out = capsys.readouterr().out
    assert all(ok for _, ok, _ in graded["rope rotation"]) and len(graded["rope rotation"]) >= 4  # visible + hidden
    assert any("tests/hidden/" in test for test, _, _ in graded["rope rotation"])
    wrong = {test: message for part, tests in graded.items() if part != "rope rotation" for test, ok, message in tests
             if ok or not message.startswith(f"NotImplementedError: {part}: ")}
    assert not wrong, f"tests of unsolved parts that do not fail by their NotImplementedError: {wrong}"
    points = assignment.PARTS["rope rotation"]["points"]
    assert total_row(out)[2:] == (points, MOST)
    hint = next(r.hint for found in assignment.find_regions(ROOT, assignment.tracked_files(ROOT)).values()
                for r in found if r.part == "fwpkm write")
    assert len(hint) > 200 and f"NotImplementedError: fwpkm write: {hint}" in out  # the whole message
    score = json.loads((tmp_path / "score.json").read_text())
    assert score["total"] == points and score["max"] == MOST
    assert score["parts"]["rope rotation"]["points"] == points and score["parts"]["rope angles"]["points"] == 0


@pytest.mark.parametrize("part", list(assignment.PARTS))
def test_solving_one_part_gives_it_full_points_and_the_next_part_none(part, student, tmp_path):
    """For every part: solve it in a student copy, stub the rest, grade it and the next part."""
    parts = list(assignment.PARTS)
    following = parts[(parts.index(part) + 1) % len(parts)]
    submission = tmp_path / "submission"
    shutil.copytree(student, submission)
    solve(submission, part)
    graded = assignment.grade(str(submission), [part, following])
    failed = [(test, message) for test, ok, message in graded[part] if not ok]
    assert not failed and any("tests/hidden/" in test for test, _, _ in graded[part]), failed
    assert all(not ok and message.startswith(f"NotImplementedError: {following}: ")
               for _, ok, message in graded[following])


def test_grade_one_part_and_refusals(student, tmp_path, capsys):
    assignment.main(["grade", str(student), "--part", "product topk", "--json", str(tmp_path / "one.json")])
    score = json.loads((tmp_path / "one.json").read_text())
    assert list(score["parts"]) == ["product topk"] and score["total"] == 0
    assert score["max"] == assignment.PARTS["product topk"]["points"]
    with pytest.raises(SystemExit, match="unknown part 'attention'; valid choices: rope angles, rope rotation"):
        assignment.grade(str(student), ["attention"])
    with pytest.raises(SystemExit, match="is not a directory"):
        assignment.grade(str(tmp_path / "missing"))
    moved = tmp_path / "moved"  # a submission whose start marker was deleted: the part scores 0 and says why
    shutil.copytree(student, moved)
    text = (moved / "fwpkm.py").read_text().replace("# --- solution: product topk ---", "# product topk")
    (moved / "fwpkm.py").write_text(text)
    graded = assignment.grade(str(moved), ["product topk"])
    assert all(not ok and "markers do not parse" in message and "an end marker without a start" in message
               for _, ok, message in graded["product topk"])


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
    graded = assignment.grade(str(tmp_path / "taken"), ["rope angles"])  # not a copy: 0 points, and why
    assert all(not ok and "rope.py does not exist" in message for _, ok, message in graded["rope angles"])
    with pytest.raises(SystemExit, match="is not a git checkout"):
        assignment.make(str(tmp_path / "out"), root=str(tmp_path / "taken"))
    # an unpacked archive inside another checkout: that checkout's files are not this copy's
    archive = tmp_path / "repo" / "archive"
    archive.mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(tmp_path / "repo")], check=True)
    with pytest.raises(SystemExit, match="archive is not a git checkout .* git init -q && git add -A"):
        assignment.make(str(tmp_path / "out"), root=str(archive))
    assert not (tmp_path / "out").exists()


def test_the_handout_lists_every_part_with_its_points_and_time():
    with open(os.path.join(ROOT, assignment.HANDOUT), encoding="utf-8") as f:
        rows = re.findall(r"^\| \d+ \| ([a-z ]+) \| .*? \| (\d+) \| (\d+) min \|", f.read(), re.M)
    assert len(rows) == len(assignment.PARTS)
    assert {part: (int(points), int(minutes)) for part, points, minutes in rows} == \
        {part: (p["points"], p["minutes"]) for part, p in assignment.PARTS.items()}
