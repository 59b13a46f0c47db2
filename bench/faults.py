"""Issue 18's fault table, tried again: the store (kills, damaged files, tampering, full disk,
read-only folder), the web (login floods, schemathesis, headers, hostile inputs) and hostile input
(image bombs, files that are not photos, broken lab configurations). Each group's rows live in
bench/faults_<group>.py as `ROWS`, a list of (name, function returning (figure text, passed)); a
group whose file is missing or does not import is named as such and the others still run. Prints
the table and writes bench/results/faults.json (one section per group, so `--only` updates its
groups and keeps the others'). Exit 0 when every group was there and every row held.

    python bench/faults.py [--only store,web,input]
"""
from __future__ import annotations

import argparse
import importlib
import json
import platform
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

GROUPS = ("store", "web", "input")
RESULTS = Path(__file__).resolve().parent / "results"


def load_rows(groups) -> tuple[list[tuple[str, str, object]], dict[str, str]]:
    """(group, name, function) of every row in the groups that import; why the others are missing."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    rows, missing = [], {}
    for group in groups:
        try:
            module = importlib.import_module(f"faults_{group}")
        except ModuleNotFoundError as exc:
            missing[group] = (f"bench/faults_{group}.py is not there yet" if exc.name == f"faults_{group}"
                              else f"does not import: {exc}")
            continue
        except Exception as exc:     # another helper's half-finished file: say so, run the rest
            missing[group] = f"does not import: {type(exc).__name__}: {exc}"
            continue
        rows += [(group, name, function) for name, function in module.ROWS]
    return rows, missing


def run_rows(rows) -> list[dict]:
    """Run each row, printing it as it ends; a row that raises is a failed row, not the end of the table."""
    done = []
    for group, name, function in rows:
        began = time.monotonic()
        try:
            figure, passed = function()
        except Exception as exc:
            figure, passed = f"the row itself failed: {type(exc).__name__}: {exc}", False
            traceback.print_exc()
        seconds = time.monotonic() - began
        print(f"{'held' if passed else 'FAIL'}  {name}: {figure}  [{seconds:.0f} s]", flush=True)
        done.append({"group": group, "fault": name, "figure": figure, "held": bool(passed),
                     "seconds": round(seconds, 1)})
    return done


def table(done: list[dict]) -> str:
    """The rows as the Markdown table of the README and the closing note."""
    lines = ["| fault | what happened | held |", "|---|---|---|"]
    lines += [f"| {row['fault']} | {row['figure']} | {'yes' if row['held'] else '**no**'} |" for row in done]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(GROUPS), help="comma-separated groups: store, web, input")
    args = parser.parse_args(argv)
    groups = [g.strip() for g in args.only.split(",") if g.strip()]
    unknown = set(groups) - set(GROUPS)
    if unknown:
        parser.error(f"unknown group(s) {', '.join(sorted(unknown))}; known: {', '.join(GROUPS)}")
    rows, missing = load_rows(groups)
    for group, why in missing.items():
        print(f"MISSING  {group}: {why}", flush=True)
    done = run_rows(rows)
    print("\n" + table(done))
    held = sum(row["held"] for row in done)
    print(f"\n{held} of {len(done)} rows held" + (f"; missing: {', '.join(missing)}" if missing else ""))
    save(groups, done, missing)
    return 0 if held == len(done) and not missing else 1


def save(groups, done: list[dict], missing: dict[str, str]) -> None:
    """bench/results/faults.json, one section per group: a run of some groups (--only) keeps the others'."""
    path = RESULTS / "faults.json"
    try:
        sections = json.loads(path.read_text())["groups"]
    except (OSError, ValueError, KeyError, TypeError):
        sections = {}
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    for group in groups:
        rows = [row for row in done if row["group"] == group]
        sections[group] = {"run_at": now, "missing": missing.get(group), "rows": rows,
                           "held": sum(row["held"] for row in rows)}
    RESULTS.mkdir(exist_ok=True)
    path.write_text(json.dumps({"machine": platform.machine(), "python": platform.python_version(),
                                "groups": sections}, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
