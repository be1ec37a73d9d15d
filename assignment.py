"""
Course-assignment mode: a student copy of this repository with the solutions cut out, a handout, and a grader that
grades each part alone with the instructor's tests.

    python assignment.py make OUT_DIR                  # the student copy, with docs/assignment/handout.md
    python assignment.py grade DIR                     # every part of the submission DIR: a score table
    python assignment.py grade DIR --part "rope rotation" --json score.json   # one part; a score file for an autograder

A solution region marks a whole block of statements inside a function body (shown indented here; this file itself
is never scanned for regions):

    # --- solution: <part name> | <hint> ---
    # | <more hint>
    <the statements of the solution>
    # --- end ---

The hint gives the equation and the shapes, not the code. It is the text after " | " on the start marker, and any
"# |" lines right after the marker continue it; at least one of the two must be there. `make` keeps the marker and
hint lines and replaces the statements with one line at the marker's indentation,

    raise NotImplementedError("<part name>: <hint>")

so every file still imports, and a test that reaches an unsolved part fails naming it and its hint. `make` refuses
unbalanced or nested markers, a part without tests in PARTS (or tests without a region), a stub that does not land
inside a function, and a student copy that still holds a solution: a statement line of a region, or of the fast paths
(fast_paths/, which compute the same things another way and stay behind with results/, docs/ and the hidden tests),
anywhere in it. Part names are unique: one region per part.

Grading, each part alone: for a part, the grader copies this (the instructor's) repository, puts the submission's
statements of that part's region in place of the reference ones, and runs the part's tests there: the visible ones
(in the student copy's tests/) and the hidden ones (tests/hidden/, which stay behind). Every other part is the
reference, so a part's points do not depend on any other part, and the submission's own tests are not used. A part
gets points × passed / total; each failure is printed with its whole message.
"""
import argparse
import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import fast_paths
from cli import ArgumentParser

ROOT = os.path.dirname(os.path.abspath(__file__))
SELF = "assignment.py"      # its docstring shows the marker format, so it is not scanned
HANDOUT = "docs/assignment/handout.md"  # the one file of docs/ that a student copy holds
LAB = ("results/", "figures/", "docs/")  # measurements and the lab's docs (they quote the code): not graded with
STAY_BEHIND = (  # what a student copy leaves out: the lab's results and notes, other forms of the solutions, grading
    *LAB,
    *(f"fast_paths/{name}" for name in fast_paths.FILES),      # the fast paths: the parts, computed another way
    "bench_kernels.py", "bench_gpu.sh", "tests/test_kernels.py", "tests/test_kernels_pkm.py",  # their benches, tests
    "tests/hidden/", "tests/test_assignment.py",         # the hidden tests; the tests of this file (need git)
)

PARTS = {  # part name -> points, minutes a student may need, visible tests (tests/) and hidden ones (tests/hidden/)
    "rope angles": dict(points=10, minutes=20, tests=[
        "tests/test_rope.py::test_angles_are_position_times_frequency_in_fp32",
        "tests/test_rope.py::test_real_positions_agree_with_integers_and_compose",
        "tests/test_rope.py::test_per_head_positions_broadcast",
    ], hidden=["tests/hidden/test_hidden.py::test_angles_at_other_sizes_and_dtypes"]),
    "rope rotation": dict(points=10, minutes=30, tests=[
        "tests/test_rope.py::test_rotation_multiplies_each_pair_by_a_unit_complex_number",
        "tests/test_rope.py::test_rotation_preserves_norms",
        "tests/test_rope.py::test_score_depends_only_on_position_difference",
    ], hidden=["tests/hidden/test_hidden.py::test_rotation_is_a_two_by_two_rotation_of_each_pair"]),
    "yarn frequencies": dict(points=10, minutes=40, tests=[
        "tests/test_rope.py::test_yarn_bands_and_attention_factor",
    ], hidden=["tests/hidden/test_hidden.py::test_yarn_at_another_length_and_factor"]),
    "drope drop and beta": dict(points=10, minutes=30, tests=[
        "tests/test_drope.py::test_after_the_drop_the_last_output_ignores_the_order_of_earlier_tokens",
        "tests/test_drope.py::test_beta_scales_q_exactly_and_is_one_within_the_training_length",
        "tests/test_drope.py::test_beta_scales_every_attention_logit",
        "tests/test_drope.py::test_beta_one_reproduces_the_unscaled_model",
    ], hidden=["tests/hidden/test_hidden.py::test_beta_at_four_times_the_training_length"]),
    "repo position network": dict(points=10, minutes=30, tests=[
        "tests/test_repo.py::test_position_network_is_a_gated_projection_to_one_position_per_head",
        "tests/test_repo.py::test_positions_are_per_head_and_move",
        "tests/test_repo.py::test_a_constant_shift_of_one_heads_positions_changes_nothing",
        "tests/test_repo.py::test_gradients_reach_the_position_network",
    ], hidden=["tests/hidden/test_hidden.py::test_position_network_at_another_width"]),
    "product topk": dict(points=10, minutes=40, tests=[
        "tests/test_fwpkm.py::test_product_topk_equals_brute_force",
    ], hidden=["tests/hidden/test_hidden.py::test_product_topk_at_other_sizes"]),
    "fwpkm write": dict(points=15, minutes=60, tests=[
        "tests/test_fwpkm.py::test_one_write_lowers_the_memorisation_loss_of_its_chunk",
        "tests/test_fwpkm.py::test_a_single_token_with_gate_one_is_rewritten_exactly",
        "tests/test_fwpkm.py::test_lm_gradients_reach_value_projection_and_gate_through_the_writes",
    ], hidden=["tests/hidden/test_hidden.py::test_a_write_with_gate_zero_changes_nothing"]),
}

START = re.compile(r"(?P<indent>[ \t]*)# --- solution: (?P<part>[^|]*?)(?: \| (?P<hint>.*?))? ---\s*")
HINT = re.compile(r"[ \t]*# \|(?: (?P<hint>.*?))?\s*")
END = re.compile(r"[ \t]*# --- end ---\s*")
MARKER = re.compile(r"\s*# --- (solution|end)\b")  # anything that looks like a marker must parse as one
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


def stays_behind(path):
    """Whether a student copy leaves the tracked file `path` out (STAY_BEHIND), the handout excepted."""
    return path != HANDOUT and any(path == p or (p.endswith("/") and path.startswith(p)) for p in STAY_BEHIND)


def code_line(line):
    """A statement line as compared for leaks: its comment cut, its spaces collapsed ('' for a comment line)."""
    return " ".join(line.split("#", 1)[0].split())


SHORTEST_LEAK = 20  # characters of a statement line, below which a line ("return q, k") is too common to be a leak


def solution_lines(root, regions):
    """{statement line: where it comes from} of every region's statements and of every function in the fast paths
    that stay behind (fast_paths/: the same computations another way), those long enough to tell a leak."""
    lines = {}
    for path, found in regions.items():
        text = read_lines(root, path)
        for r in found:
            lines.update({code: f"part {r.part!r}" for i in r.body if len(code := code_line(text[i])) >= SHORTEST_LEAK})
    for path in (p for p in STAY_BEHIND if p.startswith("fast_paths/") and p.endswith(".py")):
        if os.path.exists(os.path.join(root, path)):
            text = read_lines(root, path)
            for node in ast.walk(ast.parse("".join(text), path)):
                if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                    lines.update({code: f"{path} {node.name}" for i in range(node.body[0].lineno - 1, node.end_lineno)
                                  if len(code := code_line(text[i])) >= SHORTEST_LEAK})
    return lines


def find_leaks(texts, lines):
    """[(path, line number, what)] where a text of `texts` ({path: text}) holds one of `lines` ({statement line:
    where it comes from}: solution_lines())."""
    leaks = []
    for path, text in texts.items():
        for number, line in enumerate(text.splitlines(), 1):
            code = code_line(line)
            leaks += [(path, number, f"{lines[c]}: {c!r}") for c in lines if c in code]
    return leaks


def student_texts(directory):
    """{path: text} of the text files under directory (a student copy)."""
    texts = {}
    for folder, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(folder, name)
            try:
                with open(path, encoding="utf-8") as f:
                    texts[os.path.relpath(path, directory)] = f.read()
            except UnicodeDecodeError:  # a binary file holds no code
                continue
    return texts


def make(out_dir, root=ROOT):
    """Writes the student copy of root to out_dir, a new or empty directory, in one rename: a killed make leaves
    no half-written copy under that name, and neither does a copy that still holds a solution."""
    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir) and not (os.path.isdir(out_dir) and not os.listdir(out_dir)):
        raise SystemExit(f"error: OUT_DIR {out_dir} exists and is not an empty directory; give a new or empty one")
    files = [p for p in tracked_files(root) if not stays_behind(p)]
    if HANDOUT not in files:
        raise SystemExit(f"error: {HANDOUT} is not in {root}'s tracked files; a student copy ships it")
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
        leaks = find_leaks(student_texts(tmp), solution_lines(root, regions))
        if leaks:
            raise SystemExit(f"error: the student copy would hold solutions ({len(leaks)} lines), e.g. "
                             + "; ".join(f"{path}:{n}: {what}" for path, n, what in leaks[:5])
                             + f"; leave the file behind (STAY_BEHIND in {SELF}) or take the lines out")
        if os.path.isdir(out_dir):
            os.rmdir(out_dir)  # empty, checked above
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"wrote {out_dir}: {len(files)} files, the handout {HANDOUT}; stubbed {len(PARTS)} parts: "
          + ", ".join(f"{r.part} ({r.path})" for found in regions.values() for r in found))


def run_tests(directory, nodes):
    """Runs the pytest node ids in directory (one process, one thread) and returns {node: [(test id, passed,
    message)]}: a node id without a [parameter] gets one entry per parameter, one that did not run gets a single
    failed entry."""
    with tempfile.TemporaryDirectory() as tmp:
        report = os.path.join(tmp, "report.xml")
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                               "--continue-on-collection-errors", f"--junitxml={report}", *nodes],
                              cwd=directory, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        if done.returncode not in (0, 1) or not os.path.exists(report):  # 0: all passed, 1: some failed
            last = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()][-3:]
            raise SystemExit(f"error: pytest could not run the graded tests in {directory} (exit status "
                             f"{done.returncode}): {' | '.join(last)}")
        cases = ET.parse(report).getroot().iter("testcase")
    outcomes = {}
    for case in cases:
        test = f"{case.get('classname').replace('.', '/')}.py::{case.get('name')}"
        problem = next((p for p in (case.find(tag) for tag in ("failure", "error", "skipped")) if p is not None), None)
        outcomes[test] = (problem is None, "" if problem is None else
                          (problem.get("message") or problem.text or problem.tag).strip())
    results = {}
    for node in nodes:
        found = [(t, *o) for t, o in outcomes.items() if t == node or t.startswith(node + "[")]
        results[node] = found or [(node, False, "not run: pytest could not collect it (run it alone to see why)")]
    return results


def with_body(lines, region, body):
    """lines (a file's, as read) with region's statements replaced by the lines `body`."""
    return lines[:region.body.start] + body + lines[region.body.stop:]


def grading_tree(directory, ref, files, tree, root=ROOT):
    """Writes to `tree` the instructor's repository (root's tracked `files` but LAB) with the statements of the
    reference region `ref` taken from the submission in `directory`; returns None, or why the submission's region
    could not be read (the part then scores 0)."""
    for path in files:
        if not path.startswith(LAB):
            os.makedirs(os.path.dirname(os.path.join(tree, path)), exist_ok=True)
            shutil.copy2(os.path.join(root, path), os.path.join(tree, path), follow_symlinks=False)
    part, where = ref.part, os.path.join(directory, ref.path)
    if not os.path.isfile(where):
        return f"{where} does not exist: the submission needs the file that holds the region {part!r}"
    try:
        mine = [r for r in parse_regions(ref.path, read_lines(directory, ref.path)) if r.part == part]
    except SystemExit as e:
        return f"the submission's markers do not parse: {e}"
    if not mine:
        return (f"{where} has no region {part!r}: keep its '# --- solution: {part} ...' and '# --- end ---' lines and "
                f"write the statements between them")
    submitted = read_lines(directory, ref.path)[mine[0].body.start:mine[0].body.stop]
    with open(os.path.join(tree, ref.path), "w", encoding="utf-8") as f:
        f.write("".join(with_body(read_lines(root, ref.path), ref, submitted)))
    return None


def grade_part(directory, ref, files):
    """[(test id, passed, message)] of the part of the reference region `ref` in the submission in directory, graded
    alone; files: the instructor's tracked files."""
    nodes = PARTS[ref.part]["tests"] + PARTS[ref.part]["hidden"]
    with tempfile.TemporaryDirectory() as tree:
        problem = grading_tree(directory, ref, files, tree)
        if problem:
            return [(node, False, problem) for node in nodes]
        results = run_tests(tree, nodes)
    return [test for node in nodes for test in results[node]]


def grade(directory, parts=None, json_path=None):
    """Grades the parts (default: all) of the submission in directory, each alone, prints the score table and every
    failure with its message, writes the score as JSON to json_path if given; returns {part: [(test id, passed,
    message)]}."""
    if not os.path.isdir(directory):
        raise SystemExit(f"error: DIR {directory} is not a directory; give a student copy made by: python {SELF} make "
                         f"OUT_DIR")
    parts = list(PARTS) if parts is None else parts
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise SystemExit(f"error: unknown part {unknown[0]!r}; valid choices: {', '.join(PARTS)}")
    files = tracked_files(ROOT)
    refs = {r.part: r for found in find_regions(ROOT, files).values() for r in found}
    with ThreadPoolExecutor(max_workers=max(1, min(len(parts), os.cpu_count() or 1))) as pool:
        graded = dict(zip(parts, pool.map(lambda part: grade_part(directory, refs[part], files), parts)))
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
        print("\nnot passed (hidden tests are under tests/hidden/, which the student copy does not have):")
        for name, test, message in failures:
            print(f"\n[{name}] {test}:\n" + "\n".join(f"    {line}" for line in message.splitlines()))
    if json_path:
        score = {"parts": {name: {"points": points, "max": most, "passed": passed, "tests": total,
                                  "failures": [{"test": t, "message": m} for t, ok, m in graded[name] if not ok]}
                           for name, passed, total, points, most in rows[:-1]},
                 "total": rows[-1][3], "max": rows[-1][4]}
        tmp = f"{json_path}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(score, f, indent=1)
        os.replace(tmp, json_path)
    return graded


def main(argv=None):
    p = ArgumentParser(prog=SELF, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = p.add_subparsers(dest="command", required=True, metavar="{make,grade}")
    commands.add_parser("make", help="write a student copy").add_argument("out_dir", metavar="OUT_DIR",
                                                                          help="a new or empty directory")
    grading = commands.add_parser("grade", help="grade a submission, each part alone, with the instructor's tests")
    grading.add_argument("dir", metavar="DIR", help="the submission: a student copy with solutions written in")
    grading.add_argument("--part", action="append", metavar="NAME",
                         help=f"grade only this part (repeatable); one of: {', '.join(PARTS)}")
    grading.add_argument("--json", metavar="PATH", help="also write the score as JSON here (for an autograder)")
    args = p.parse_args(argv)
    return make(args.out_dir) if args.command == "make" else grade(args.dir, args.part, args.json)


if __name__ == "__main__":
    main()
