"""The README's demo block: `make demo`'s two commands run for real in a scratch folder, and what
they printed written between markers, so the README says what the code prints. tests/test_demo.py
runs the same demo and checks the committed block against what it printed (the demo is a
reproducible sweep: on one CPU model only trial ids, wall times and paths differ from run to run;
another CPU family's float kernels give other numbers).

usage: python tools/readme_demo.py [--root ../shared/data/idc_sample] [--keep DIR]
       (rewrite README.md's block; --keep leaves the demo's store in DIR, for make screenshots)
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "experiments" / "demo.yaml"
IDC_SAMPLE = REPO.parent / "shared" / "data" / "idc_sample"
BEGIN, END = "<!-- demo-output: make readme writes this block (tools/readme_demo.py) -->", "<!-- /demo-output -->"
# The lines a trial prints as it starts or waits, and a retrained fold's epoch lines, are left out;
# trials' and folds' end lines are kept, each kind sorted (they come in whatever order the machine's
# load gives), and everything else in the order printed.
LEFT_OUT = ("start ", "resume ", "retry ", "epoch ")
SORTED = ("end ", "fold ")
TRIAL_ID = r"\b[0-9a-f]{8}\b"
# One terminal width on every machine: the leaderboard lays its tables out for it (sweep lines never wrap).
COLUMNS = "120"


@dataclass(frozen=True)
class DemoRun:
    """What the demo's sweep and leaderboard printed, with their wall seconds and the CPU model."""

    sweep: str
    leaderboard: str
    sweep_seconds: float
    leaderboard_seconds: float
    cpu: str


def _cpu_model() -> str:
    """Return the model of the CPU this demo runs on."""
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if "model name" in line]
        model = names[0] if names else model
    return model


def _harness(args: list[str], scratch: Path, experiment: Path) -> tuple[str, float]:
    """Run `harness ARGS` and return its stdout with the scratch paths shown as a user's, and its seconds."""
    env = {**os.environ, "COLUMNS": COLUMNS, "TERM": "dumb", "NO_COLOR": "1"}
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "harness", *args], cwd=REPO, env=env, capture_output=True, text=True, check=False
    )
    seconds = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"harness {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    shown = done.stdout.replace(str(experiment), "experiments/demo.yaml").replace(str(scratch), "…/results")
    return shown, seconds


def run_demo(root: Path, scratch: Path) -> DemoRun:
    """Run `make demo`'s sweep and leaderboard on the dataset at `root`, writing to `scratch`;
    returns what they printed."""
    config = yaml.safe_load(DEMO.read_text())
    config["output_dir"] = str(scratch)
    experiment = scratch / "demo.yaml"
    experiment.write_text(yaml.safe_dump(config, sort_keys=False))
    sweep, sweep_seconds = _harness(["sweep", str(experiment), "--root", str(root)], scratch, experiment)
    board, board_seconds = _harness(["leaderboard", str(experiment)], scratch, experiment)
    return DemoRun(sweep, board, sweep_seconds, board_seconds, _cpu_model())


def _unordered(line: str) -> str:
    """Return a line's sort key: without its trial id, which differs from run to run."""
    return re.sub(TRIAL_ID, "", line)


def sweep_excerpt(printed: str) -> list[str]:
    """Return the sweep's lines the README shows: without the start, resume and fold epoch lines;
    the trials' end lines, then the folds', each sorted where the first of its kind stood."""
    lines = [line.rstrip() for line in printed.rstrip("\n").splitlines()]
    kept = [line for line in lines if not line.startswith(LEFT_OUT)]
    shown = [f"… ({len(lines) - len(kept)} start, resume and fold epoch lines left out)"]
    for line in kept:
        kind = next((k for k in SORTED if line.startswith(k)), None)
        if kind is None:
            shown.append(line)
        elif not any(seen.startswith(kind) for seen in shown):
            shown += sorted((same for same in kept if same.startswith(kind)), key=_unordered)
    return shown


def render(run: DemoRun) -> str:
    """Return the README's demo block for one run of the demo."""
    return "\n".join(
        [
            BEGIN,
            f"Measured on {run.cpu}, {os.cpu_count()} cores ({platform.system()}): the sweep took "
            f"{run.sweep_seconds:.0f} s and the leaderboard {run.leaderboard_seconds:.0f} s (wall clock, with the "
            "venv in place).",
            "",
            "```console",
            "$ harness sweep experiments/demo.yaml --root ../shared/data/idc_sample",
            *sweep_excerpt(run.sweep),
            "$ harness leaderboard experiments/demo.yaml",
            *(line.rstrip() for line in run.leaderboard.rstrip("\n").splitlines()),
            "```",
            END,
        ]
    )


# What differs between two runs of the same reproducible sweep: Ray's trial ids, MLflow's run ids,
# the sweep's timestamp, wall seconds and progress-bar clocks.
MASKS = (
    (r"\b\d{8}-\d{6}\b", "<stamp>"),  # first: its eight date digits would read as a trial id
    (r"\b[0-9a-f]{32}\b", "<run>"),
    (TRIAL_ID, "<trial>"),
    (r"\b\d+(\.\d+)? s\b", "<seconds> s"),
    (r"\b\d+:\d\d:\d\d\b", "<clock>"),
    # How many lines were left out: a rung's last trial to arrive resumes without a line when it
    # goes on, so the count depends on which trial that was.
    (r"^… \(\d+ start, resume", "… (<n> start, resume"),
)


def comparable(block: str) -> list[str]:
    """Return a block's console lines (the machine line left out) with what differs between two
    runs of the same reproducible sweep masked, and runs of spaces (a centred title) collapsed."""
    lines = block.splitlines()
    if "```console" not in lines:
        return lines  # an empty block: nothing to compare but the markers
    body = lines[lines.index("```console") :]
    for pattern, mask in MASKS:
        body = [re.sub(pattern, mask, line) for line in body]
    return [" ".join(line.split()) for line in body]


def measured_cpu(block: str) -> str:
    """Return the CPU model a demo block's machine line names ("" when it has none)."""
    found = re.search(r"^Measured on (.+), \d+ cores \(", block, re.MULTILINE)
    return found.group(1) if found else ""


def readme_block(text: str) -> str:
    """Return the demo block of a README's text, markers included."""
    return text[text.index(BEGIN) : text.index(END) + len(END)]


def main() -> None:
    """Run the demo in a scratch folder and rewrite README.md's demo block with what it printed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=IDC_SAMPLE, help="the IDC sample (the demo's data)")
    parser.add_argument(
        "--keep", type=Path, help="run the demo in this new folder and keep it (default: a scratch one)"
    )
    args = parser.parse_args()
    if not args.root.is_dir():
        print(
            f"error: --root {args.root}: no such folder (the README's demo runs on the real IDC sample)",
            file=sys.stderr,
        )
        sys.exit(2)
    if args.keep is not None:
        args.keep.mkdir(parents=True)  # a new folder: the block is one sweep's output, not a store's latest
        block = render(run_demo(args.root.resolve(), args.keep.resolve()))
    else:
        with tempfile.TemporaryDirectory(prefix="readme-demo-") as scratch:
            block = render(run_demo(args.root.resolve(), Path(scratch)))
    readme = REPO / "README.md"
    text = readme.read_text()
    readme.write_text(text.replace(readme_block(text), block))
    print(f"README.md: demo block rewritten ({len(block.splitlines())} lines)")


if __name__ == "__main__":
    main()
