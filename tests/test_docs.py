"""README, docs/ and results/ agree with the files they cite: every relative link and image resolves, every table
README quotes from a results file (marked `<!-- TABLE: path -->` ... `<!-- end TABLE -->`) is that file's table line
for line, and nothing committed names the machine's absolute paths."""
import os
import re
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tracked(pattern):
    done = subprocess.run(["git", "ls-files", pattern], cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip("not a git checkout")
    return [p for p in done.stdout.split() if os.path.isfile(os.path.join(ROOT, p))]


def test_every_relative_link_resolves():
    broken = []
    for path in tracked("*.md"):
        text = open(os.path.join(ROOT, path), encoding="utf-8").read()
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue  # a web address or an anchor
            where = os.path.normpath(os.path.join(ROOT, os.path.dirname(path), target.split("#")[0]))
            if not os.path.exists(where):
                broken.append(f"{path}: {target}")
    assert not broken, "links to files that do not exist:\n" + "\n".join(broken)


def test_readme_quotes_its_results_tables_as_they_are():
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    quoted = re.findall(r"<!-- (\w+): (\S+) -->\n(.*?)\n<!-- end \1 -->", readme, re.S)
    assert quoted, "README quotes no results table"
    for name, source, block in quoted:
        table = [line for line in open(os.path.join(ROOT, source), encoding="utf-8").read().splitlines()
                 if line.startswith("|")]
        assert [line for line in block.splitlines() if line.startswith("|")] == table, \
            f"README's {name} table differs from {source}'s: run summarize.py or bench.py again and copy it"


def test_nothing_committed_names_this_machines_paths():
    named = []
    for path in tracked("README.md") + tracked("docs/*") + tracked("results/*"):
        if path.endswith((".md", ".json", ".txt")):
            text = open(os.path.join(ROOT, path), encoding="utf-8").read()
            named += [f"{path}: {m}" for m in sorted(set(re.findall(r"(?:/work|/root|/home/\w+)/[\w./-]+", text)))]
    assert not named, "absolute paths of a machine in committed files:\n" + "\n".join(named)
