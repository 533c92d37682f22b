"""A SIGKILL at any step of a checkpoint write leaves the old checkpoint or the new one whole, never a mixture."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

SCRIPT = Path(__file__).with_name("kill_points.py")
WHOLE = {"old", "new", "old and new"}


def test_a_kill_at_any_step_of_a_checkpoint_write_leaves_the_old_or_the_new_one_whole(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    kills = defaultdict(list)
    for line in done.stdout.splitlines():
        row = json.loads(line)
        kills[row["scenario"]].append(row)
    assert set(kills) == {"next step, keep 1", "same step superseded", "best/ replaced"}
    for scenario, rows in kills.items():
        # Every step of the write was a kill point, from before the first file to after the last rename.
        assert len(rows) >= 10, (scenario, rows)
        assert all(row["killed"] for row in rows), scenario
        assert rows[0]["result"] == "old" and rows[-1]["result"] == "new", (scenario, rows)
        broken = [row for row in rows if row["result"] not in WHOLE or row["leftovers"]]
        assert not broken, (scenario, broken)
    # The files themselves were steps too (a kill between model.safetensors and optimizer.bin).
    events = {row["event"] for row in kills["next step, keep 1"]}
    assert {"safe_save_file end", "save start"} <= events
