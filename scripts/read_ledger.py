#!/usr/bin/env python3
"""Reads regime B's greedy generations (a run's `generations/step-NNNNNN.jsonl`) the way
RESULTS.md reports them: which path each answer takes (the days forward or backward; one
running total, or a total of the gains and one of the losses), how many of each are right,
the arithmetic lines `a + b = c` / `a - b = c` that are wrong (and those whose result has more
digits than the true one: a number written as two), and the day lines that copy
the prompt's verb or amount wrongly. Standard library only.

    python3 scripts/read_ledger.py runs/demo-b/eval-student-warm/generations/step-000000.jsonl
"""
import collections
import json
import re
import sys

DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]


def events(prompt):
    """Each day's (verb, amount) as the prompt states it."""
    out = {}
    for day in DAYS:
        m = re.search(r"On %s (\w+) ([a-z ]+?) (\d+)\." % day, prompt)
        if m:
            out[day] = (m.group(2), int(m.group(3)))
    return out


def read(path):
    rows = [json.loads(line) for line in open(path, encoding="utf-8") if line.strip()]
    counts, paths, right = collections.Counter(), collections.Counter(), collections.Counter()
    for row in rows:
        said, lines = events(row["prompt"]), row["response"].split("\n")
        days = [l.split(":")[0] for l in lines if l.split(":")[0] in DAYS]
        named = [d for d in DAYS if d in said]  # the prompt's days, in order (2 to 7 of them)
        first = days[0] if days else ""
        direction = "forward" if named and first == named[0] else "backward" if named and first == named[-1] else "other"
        totals = "two totals" if ("gains" in row["response"] or "losses" in row["response"]) else "one total"
        kind = f"{direction}/{totals}"
        paths[kind] += 1
        right[kind] += bool(row["correct"])
        for line in lines:
            day = line.split(":")[0]
            if day in DAYS:
                counts["day lines"] += 1
                m = re.match(r"\w+: \w+ ([a-z ]+?) (\d+)", line)
                if m and day in said and (m.group(1), int(m.group(2))) != said[day]:
                    counts["day lines copying the prompt wrongly"] += 1
            for a, op, b, c in re.findall(r"(\d+) ([+-]) (\d+) = (\d+)", line):
                counts["arithmetic lines"] += 1
                true = int(a) + int(b) if op == "+" else int(a) - int(b)
                if true != int(c):
                    counts["arithmetic lines wrong"] += 1
                if len(c) > len(str(true)):
                    # a result with more digits than the sum can have: one number written
                    # as two (`8 + 105 = 11110`)
                    counts["arithmetic lines with a malformed result"] += 1
        if set(days) != set(named) or len(days) != len(set(days)):
            counts["answers skipping or repeating a day"] += 1
    print(path)
    print(f"  correct {sum(bool(r['correct']) for r in rows)} of {len(rows)}")
    for key, value in sorted(counts.items()):
        print(f"  {key}: {value}")
    for kind, n in paths.most_common():
        print(f"  path {kind}: {n}, right {right[kind]}")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: read_ledger.py GENERATIONS.jsonl...")
    for p in sys.argv[1:]:
        read(p)
