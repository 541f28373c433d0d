#!/usr/bin/env python3
"""Check that a run's TensorBoard event files are read by the real `tensorboard` package and
hold the same scalars as its metrics.jsonl.

    pip install tensorboard && python scripts/check_tensorboard.py RUN_DIR
"""
import json
import sys
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

run = Path(sys.argv[1])
acc = EventAccumulator(str(run / "tb"))
acc.Reload()
tags = acc.Tags()["scalars"]
expected = {}
for line in (run / "metrics.jsonl").read_text().splitlines():
    row = json.loads(line)
    for k, v in row.items():
        if k != "step" and v is not None:
            expected[(k, row["step"])] = v
found = {(t, e.step): e.value for t in tags for e in acc.Scalars(t)}
missing = [k for k in expected if k not in found]
worst = max(abs(found[k] - v) / max(1.0, abs(v)) for k, v in expected.items() if k in found)
print(f"{len(tags)} tags, {len(found)} scalars read by tensorboard; {len(missing)} of metrics.jsonl missing; "
      f"max relative difference {worst:.2e}")
sys.exit(1 if missing or worst > 1e-6 else 0)
