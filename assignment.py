"""
Course-assignment mode: a student copy of this repository with the solutions cut out, and a grader for it.

    python assignment.py make OUT_DIR    # copy the git-tracked files to OUT_DIR, every solution region stubbed
    python assignment.py grade DIR       # run each part's tests in DIR: a score table per part and the total

A solution region marks a whole block of statements inside a function body (shown indented here; this file itself
is never scanned for regions):

    # --- solution: <part name> | <hint> ---
    # | <more hint>
    <the statements of the solution>
    # --- end ---

The hint says what to compute and the equation. It is the text after " | " on the start marker, and any "# |" lines
right after the marker continue it; at least one of the two must be there. `make` keeps the marker and hint lines
and replaces the statements with one line at the marker's indentation,

    raise NotImplementedError("<part name>: <hint>")

so every file still imports, and a test that reaches an unsolved part fails naming it and its hint. `make` refuses
unbalanced or nested markers, a part without tests in PARTS (or tests without a region), and a stub that does not
land inside a function. Part names are unique: one region per part.

Grading: PARTS maps each part to its points and the pytest node ids that check it (fast CPU tests; a node id
without a [parameter] counts each of its parameters as a test). `grade` runs them all in one pytest process in DIR
and gives a part points × passed / total; under the table each failure is listed with its message on one line
(the exception; expected vs got). It runs DIR's own tests: to grade a submission, copy the instructor's tests/
over it first. Later parts build on earlier ones (the RePo and FwPKM tests run RoPE and the product top-k).
"""
import argparse
import ast
import os
import re
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from cli import ArgumentParser

ROOT = os.path.dirname(os.path.abspath(__file__))
SELF = "assignment.py"                           # its docstring shows the marker format, so it is not scanned
INSTRUCTOR_ONLY = ("tests/test_assignment.py",)  # checks `make` itself, which a student copy (no git) cannot run

PARTS = {  # part name -> points and the tests that grade it
    "rope angles": dict(points=10, tests=[
        "tests/test_rope.py::test_angles_are_position_times_frequency_in_fp32",
        "tests/test_rope.py::test_real_positions_agree_with_integers_and_compose",
        "tests/test_rope.py::test_per_head_positions_broadcast",
    ]),
    "rope rotation": dict(points=10, tests=[
        "tests/test_rope.py::test_rotation_multiplies_each_pair_by_a_unit_complex_number",
        "tests/test_rope.py::test_rotation_preserves_norms",
        "tests/test_rope.py::test_score_depends_only_on_position_difference",
    ]),
    "yarn frequencies": dict(points=10, tests=[
        "tests/test_rope.py::test_yarn_bands_and_attention_factor",
    ]),
    "drope drop and beta": dict(points=10, tests=[
        "tests/test_drope.py::test_after_the_drop_the_last_output_ignores_the_order_of_earlier_tokens",
        "tests/test_drope.py::test_beta_scales_q_exactly_and_is_one_within_the_training_length",
        "tests/test_drope.py::test_beta_scales_every_attention_logit",
        "tests/test_drope.py::test_beta_one_reproduces_the_unscaled_model",
    ]),
    "repo position network": dict(points=10, tests=[
        "tests/test_repo.py::test_position_network_is_a_gated_projection_to_one_position_per_head",
        "tests/test_repo.py::test_positions_are_per_head_and_move",
        "tests/test_repo.py::test_a_constant_shift_of_one_heads_positions_changes_nothing",
        "tests/test_repo.py::test_gradients_reach_the_position_network",
    ]),
    "product topk": dict(points=10, tests=[
        "tests/test_fwpkm.py::test_product_topk_equals_brute_force",
    ]),
    "fwpkm write": dict(points=15, tests=[
        "tests/test_fwpkm.py::test_one_write_lowers_the_memorisation_loss_of_its_chunk",
        "tests/test_fwpkm.py::test_a_single_token_with_gate_one_is_rewritten_exactly",
        "tests/test_fwpkm.py::test_lm_gradients_reach_value_projection_and_gate_through_the_writes",
    ]),
}

START = re.compile(r"(?P<indent>[ \t]*)# --- solution: (?P<part>[^|]*?)(?: \| (?P<hint>.*?))? ---\s*")
HINT = re.compile(r"[ \t]*# \|(?: (?P<hint>.*?))?\s*")
END = re.compile(r"[ \t]*# --- end ---\s*")
MARKER = re.compile(r"\s*# --- (solution|end)\b")  # anything that looks like a marker must parse as one
MESSAGE_CHARS = 200  # of a failure's message in the list under the table
FORMAT = "'# --- solution: <part name> | <hint> ---' ... '# --- end ---'"


@dataclass
class Region:
    path: str    # relative to the repository root
    part: str
    hint: str
    indent: str
    body: range  # 0-based line indices of the solution's statements (after the hint lines, before the end marker)

    def stub(self):
        return f"{self.indent}raise NotImplementedError({f'{self.part}: {self.hint}'!r})\n"


def parse_regions(path, lines):
    """The regions of one file (lines as read, with their newlines); bad markers end the program naming the line."""
    def fail(i, why):
        raise SystemExit(f"error: {path}:{i + 1}: {why}; the format is {FORMAT}")
    regions, open_at = [], None
    for i, line in enumerate(lines):
        if not MARKER.match(line):
            continue
        start, end = START.fullmatch(line), END.fullmatch(line)
        if not (start or end):
            fail(i, f"malformed marker {line.strip()!r}")
        if start and open_at is not None:
            fail(i, f"a region starts inside the region opened at line {open_at + 1} (regions do not nest)")
        if end and open_at is None:
            fail(i, "an end marker without a start")
        if start:
            open_at, opened = i, start
            continue
        hints = [opened["hint"]] if opened["hint"] else []
        first = open_at + 1
        while first < i and HINT.fullmatch(lines[first]):
            hints.append(HINT.fullmatch(lines[first])["hint"] or "")
            first += 1
        hint, part = " ".join(h.strip() for h in hints).strip(), opened["part"].strip()
        if not part or not hint:
            fail(open_at, "a region needs a part name and a hint")
        if not any(line.strip() for line in lines[first:i]):
            fail(open_at, f"region {part!r} has no statements")
        regions.append(Region(path, part, hint, opened["indent"], range(first, i)))
        open_at = None
    if open_at is not None:
        fail(open_at, "a region without an end marker")
    return regions


def stubbed(path, lines, regions):
    """The student version of a file: each region's statements replaced by its raise, which must parse and lie
    inside a function (so the file still imports)."""
    starts, out, stub_lines, i = {r.body.start: r for r in regions}, [], set(), 0
    while i < len(lines):
        if i in starts:
            out.append(starts[i].stub())
            stub_lines.add(len(out))  # 1-based, as ast numbers lines
            i = starts[i].body.stop
        else:
            out.append(lines[i])
            i += 1
    text = "".join(out)
    try:
        tree = ast.parse(text, path)
    except SyntaxError as e:
        raise SystemExit(f"error: {path}:{e.lineno}: the stubbed file does not parse ({e.msg}); a region must be a "
                         f"whole block of statements") from None
    in_functions = {node.lineno for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                    for node in ast.walk(f) if isinstance(node, ast.Raise)}
    outside = sorted(stub_lines - in_functions)
    if outside:
        raise SystemExit(f"error: {path}: the stub at line {outside[0]} of the student copy is not inside a "
                         f"function; a region must be a block of statements in a function body")
    return text


def tracked_files(root):
    """The git-tracked files of root that exist in its working tree, as paths relative to root."""
    try:  # root itself must be the checkout: inside another repository, ls-files would list that one's files
        top = subprocess.run(["git", "-C", root, "rev-parse", "--show-toplevel"], capture_output=True, text=True,
                             check=True).stdout.strip()
        if os.path.realpath(top) != os.path.realpath(root):
            raise subprocess.CalledProcessError(1, "git")
        listed = subprocess.run(["git", "-C", root, "ls-files", "-z"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        raise SystemExit(f"error: {root} is not a git checkout (a downloaded archive has no .git); make copies the "
                         f"git-tracked files, so run it in a clone, or make one here first: cd {root} && git init -q "
                         f"&& git add -A") from None
    return [p for p in listed.stdout.split("\0") if p and os.path.lexists(os.path.join(root, p))]


def read_lines(root, path):
    with open(os.path.join(root, path), encoding="utf-8") as f:
        return f.readlines()


def find_regions(root, files):
    """{path: [Region]} for the Python files among `files` that have regions; checks them against PARTS."""
    regions = {}
    for path in files:
        if path.endswith(".py") and path != SELF:
            found = parse_regions(path, read_lines(root, path))
            if found:
                regions[path] = found
    where = {}
    for r in (r for found in regions.values() for r in found):
        if r.part in where:
            raise SystemExit(f"error: part {r.part!r} has two regions ({where[r.part]}, {r.path}); part names are "
                             f"unique")
        where[r.part] = r.path
    if where.keys() - PARTS.keys():
        raise SystemExit(f"error: regions without tests: {sorted(where.keys() - PARTS.keys())}; add them to PARTS "
                         f"in {SELF} (parts there: {', '.join(PARTS)})")
    if PARTS.keys() - where.keys():
        raise SystemExit(f"error: parts in PARTS without a region: {sorted(PARTS.keys() - where.keys())}; regions "
                         f"found: {', '.join(where) or 'none'}")
    return regions


def make(out_dir, root=ROOT):
    """Writes the student copy of root to out_dir, a new or empty directory, in one rename: a killed make leaves
    no half-written copy under that name."""
    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir) and not (os.path.isdir(out_dir) and not os.listdir(out_dir)):
        raise SystemExit(f"error: OUT_DIR {out_dir} exists and is not an empty directory; give a new or empty one")
    files = [p for p in tracked_files(root) if p not in INSTRUCTOR_ONLY]
    regions = find_regions(root, files)
    student = {path: stubbed(path, read_lines(root, path), found) for path, found in regions.items()}
    os.makedirs(os.path.dirname(out_dir), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.", suffix=".tmp", dir=os.path.dirname(out_dir))
    try:
        for path in files:
            src, dst = os.path.join(root, path), os.path.join(tmp, path)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            if path in student:
                with open(dst, "w", encoding="utf-8") as f:
                    f.write(student[path])
                shutil.copymode(src, dst)
            else:
                shutil.copy2(src, dst, follow_symlinks=False)
        if os.path.isdir(out_dir):
            os.rmdir(out_dir)  # empty, checked above
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"wrote {out_dir}: {len(files)} files; stubbed {len(PARTS)} parts: "
          + ", ".join(f"{r.part} ({r.path})" for found in regions.values() for r in found))


def run_tests(directory, nodes):
    """Runs the pytest node ids in directory (one process) and returns {node: [(test id, passed, message)]}: a node
    id without a [parameter] gets one entry per parameter, one that did not run gets a single failed entry."""
    with tempfile.TemporaryDirectory() as tmp:
        report = os.path.join(tmp, "report.xml")
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                               "--continue-on-collection-errors", f"--junitxml={report}", *nodes],
                              cwd=directory, capture_output=True, text=True)
        if done.returncode not in (0, 1) or not os.path.exists(report):  # 0: all passed, 1: some failed
            last = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()][-3:]
            raise SystemExit(f"error: pytest could not run the graded tests in {directory} (exit status "
                             f"{done.returncode}): {' | '.join(last)}")
        cases = ET.parse(report).getroot().iter("testcase")
    outcomes = {}
    for case in cases:
        test = f"{case.get('classname').replace('.', '/')}.py::{case.get('name')}"
        problem = next((p for p in (case.find(tag) for tag in ("failure", "error", "skipped")) if p is not None), None)
        lines = [] if problem is None else (problem.get("message") or problem.text or problem.tag).splitlines()
        message = " / ".join(line.strip() for line in lines if line.strip())  # one line: exception, expected vs got
        outcomes[test] = (problem is None, message if len(message) <= MESSAGE_CHARS else message[:MESSAGE_CHARS] + "…")
    results = {}
    for node in nodes:
        found = [(t, *o) for t, o in outcomes.items() if t == node or t.startswith(node + "[")]
        results[node] = found or [(node, False, "not run: pytest could not collect it (run it alone to see why)")]
    return results


def grade(directory):
    """Prints the score table of the copy in directory and its failures; returns {part: [(test id, passed,
    message)]}."""
    if not os.path.isdir(os.path.join(directory, "tests")):
        raise SystemExit(f"error: DIR {directory} has no tests/ directory; give a copy made by: python {SELF} make "
                         f"OUT_DIR")
    results = run_tests(directory, list(dict.fromkeys(node for part in PARTS.values() for node in part["tests"])))
    graded = {name: [test for node in part["tests"] for test in results[node]] for name, part in PARTS.items()}
    rows = []
    for name, tests in graded.items():
        passed = sum(ok for _, ok, _ in tests)
        rows.append((name, passed, len(tests), PARTS[name]["points"] * passed / len(tests), PARTS[name]["points"]))
    rows.append(("total", *(sum(row[i] for row in rows) for i in range(1, 5))))
    width = max(len(row[0]) for row in rows)
    print(f"{'part':<{width}}  {'tests passed':>12}  {'points':>12}")
    for name, passed, total, points, most in rows:
        print(f"{name:<{width}}  {f'{passed} / {total}':>12}  {f'{points:.1f} / {most}':>12}")
    failures = [(name, test, message) for name, tests in graded.items() for test, ok, message in tests if not ok]
    if failures:
        print("\nnot passed (a test graded in two parts is listed under each; python -m pytest <test> shows all):")
        for name, test, message in failures:
            print(f"  [{name}] {test}: {message}")
    return graded


def main(argv=None):
    p = ArgumentParser(prog=SELF, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = p.add_subparsers(dest="command", required=True, metavar="{make,grade}")
    commands.add_parser("make", help="write a student copy").add_argument("out_dir", metavar="OUT_DIR",
                                                                          help="a new or empty directory")
    commands.add_parser("grade", help="grade a copy").add_argument("dir", metavar="DIR", help="the copy to grade")
    args = p.parse_args(argv)
    return make(args.out_dir) if args.command == "make" else grade(args.dir)


if __name__ == "__main__":
    main()
