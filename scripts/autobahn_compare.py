#!/usr/bin/env python3
"""Compares an Autobahn index.json with the committed per-case expectations.

usage: autobahn_compare.py INDEX_JSON EXPECTED_JSON [--update]

Only the expected cases the run selected are compared (the runner's cases.txt beside
INDEX_JSON lists them), so a run of a subset (AUTOBAHN_CASES) is checked against its part
of the file; --update merges the run's cases into the file.

Each case is ranked ok > non_strict > informational > unimplemented > failed (the
classification of ../shared/tools/autobahn/summarize.py). Exit 1 when any expected case
is missing or ranks lower than expected; better results are reported, not failed
(run with --update to record them).
"""
import json
import sys

import os  # noqa: E402

sys.path.insert(0, os.environ.get("AUTOBAHN_TOOLS")
                or os.path.join(os.path.dirname(__file__), "../../shared/tools/autobahn"))
from summarize import classify  # noqa: E402

RANK = {"failed": 0, "unimplemented": 1, "informational": 2, "non_strict": 3, "ok": 4}


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    update = "--update" in sys.argv
    index = json.load(open(args[0]))
    results = next(iter(index.values())) if index else {}
    got = {case: classify(r.get("behavior"), r.get("behaviorClose")) for case, r in results.items()}
    key = lambda c: tuple(int(x) for x in c.split("."))  # noqa: E731
    selected_file = os.path.join(os.path.dirname(args[0]), "cases.txt")
    selected = None
    if os.path.exists(selected_file):
        selected = {line.strip() for line in open(selected_file) if line.strip()}
    if update:
        merged = json.load(open(args[1])) if os.path.exists(args[1]) else {}
        merged.update(got)
        with open(args[1], "w") as f:
            json.dump({c: merged[c] for c in sorted(merged, key=key)}, f, indent=1)
            f.write("\n")
        print("autobahn_compare: merged %d cases into %s (%d in all)" % (len(got), args[1], len(merged)))
        return 0
    expected = json.load(open(args[1]))
    if selected is not None:
        expected = {c: e for c, e in expected.items() if c in selected}
    worse = [(c, e, got.get(c, "missing")) for c, e in expected.items()
             if RANK.get(got.get(c), -1) < RANK[e]]
    better = [(c, e, got[c]) for c, e in expected.items() if c in got and RANK[got[c]] > RANK[e]]
    for c, e, g in better:
        print("autobahn_compare: %s improved: %s -> %s" % (c, e, g))
    for c, e, g in worse:
        print("autobahn_compare: REGRESSION %s: expected %s, got %s" % (c, e, g))
    print("autobahn_compare: %d cases, %d worse, %d better" % (len(expected), len(worse), len(better)))
    return 1 if worse else 0


if __name__ == "__main__":
    sys.exit(main())
