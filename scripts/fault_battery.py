"""The fault battery: what a long run on a shared, preemptible machine meets, done to the
demo, and what came of it.

    python scripts/fault_battery.py [--out DIR] [--kills 5] [--seed 0] [--record]

Every scenario trains the same small demo run (a few hundred iterations on CPU) through
``train.py`` in a subprocess, as a user or a cluster would, and compares its final
weights with one uninterrupted run:

* SIGKILL at random moments (checkpoints are written every few iterations, so some kills
  land inside a write), re-running the same command each time until it finishes;
* 64 bytes flipped inside the newest checkpoint of a stopped run, then resuming;
* a second run started in the directory of a running one;
* SIGTERM, SIGINT and SIGUSR1 mid-run, then resuming;
* a disk that fills up during a checkpoint write (a small tmpfs; needs root, else skipped);
* the demo pointed at a folder of the user's.

Results go to ``runs/fault_battery/<date>/`` (``results.md``, ``results.json`` and each
scenario's runs); ``--record`` also writes the table into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from emanet.benchmark_records import machine_cell, machine_description
from emanet.io import atomic_write, write_json

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs" / "benchmarks.md"
BEGIN, END = "<!-- fault-battery:begin -->", "<!-- fault-battery:end -->"
STOPPED = 3  # the documented status of a run stopped by a signal, with its checkpoint

ITERATIONS = 300
RUN = [
    f"schedule.iterations={ITERATIONS}", "schedule.batch_size=4", "schedule.log_every=20",
    "schedule.checkpoint_every=5", "dataset.generate.num_train=8", "dataset.generate.num_val=2",
    "eval.scales=[1.0]", "eval.flip=false", "runtime.num_workers=0", "runtime.progress=false",
    # One thread: on a machine busy with other work, torch's default thread count
    # oversubscribes the cores and a run takes many times longer.
    "runtime.threads=1",
]


class Battery:
    """Runs ``train.py`` on the battery's settings; every run shares one data root."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.data_root = out / "data"

    def command(self, run_dir: Path, *extra: str) -> list[str]:
        return [sys.executable, str(REPO / "train.py"), *RUN, f"data_root={self.data_root}",
                f"hydra.run.dir={run_dir}", *extra]

    def start(self, run_dir: Path, *extra: str) -> subprocess.Popen:
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        log = open(run_dir.parent / f"{run_dir.name}.out", "a")  # noqa: SIM115 (the child's output)
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        return subprocess.Popen(self.command(run_dir, *extra), cwd=self.out, env=env, stdout=log,
                                stderr=subprocess.STDOUT, text=True)

    def run(self, run_dir: Path, *extra: str, timeout: float = 600) -> subprocess.CompletedProcess:
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        return subprocess.run(self.command(run_dir, *extra), cwd=self.out, env=env, capture_output=True,
                              text=True, timeout=timeout)


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)["model"]


def identical(run_dir: Path, reference: dict[str, torch.Tensor]) -> bool:
    weights = final_weights(run_dir)
    return weights.keys() == reference.keys() and all(torch.equal(weights[k], reference[k]) for k in reference)


def wait_for(condition: Callable[[], bool], process: subprocess.Popen, timeout: float = 300) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if process.poll() is not None:
            return False
        time.sleep(0.05)
    return False


def newest_iteration(run_dir: Path) -> int:
    names = sorted((run_dir / "checkpoints").glob("iter_*.pt"))
    return int(names[-1].stem.removeprefix("iter_")) if names else 0


def last_line(text: str, containing: str) -> str:
    return next((line for line in reversed(text.splitlines()) if containing in line), "")


def random_kills(battery: Battery, reference: dict, kills: int, seed: int) -> dict:
    """SIGKILL, alternately at a random moment after a random number of further iterations
    and the moment a checkpoint write is under way (its temporary file exists), re-running
    the same command after each; then once more to the end."""
    run_dir = battery.out / "kills" / "run"
    rng = random.Random(seed)
    moments, mid_write = [], 0
    for attempt in range(kills):
        process = battery.start(run_dir)
        if attempt % 2 == 0:
            target = min(ITERATIONS - 5, newest_iteration(run_dir) + rng.randint(10, 60))
            reached = wait_for(lambda target=target: newest_iteration(run_dir) >= target, process)
            time.sleep(rng.uniform(0.0, 0.3))
        else:
            reached = wait_for(lambda: any((run_dir / "checkpoints").glob(".*.tmp")), process)
        if not reached or process.poll() is not None:
            process.wait()
            continue
        process.kill()
        process.wait()
        writing = any((run_dir / "checkpoints").glob(".*.tmp"))
        mid_write += writing
        moments.append(f"iteration {newest_iteration(run_dir)}{' mid-write' if writing else ''}")
    finished = battery.run(run_dir)
    ok = finished.returncode == 0 and identical(run_dir, reference)
    return {
        "scenario": f"SIGKILL {len(moments)} times ({mid_write} during a checkpoint write), re-running the same "
                    "command after each",
        "observed": f"killed after {', '.join(moments)}; the last run exit {finished.returncode}, no temporary files "
                    f"left: {not any((run_dir / 'checkpoints').glob('.*.tmp'))}; final weights "
                    f"{'bit-identical' if ok else 'DIFFERENT'}",
        "passed": ok and not any((run_dir / "checkpoints").glob(".*.tmp")),
    }


def stop_with(battery: Battery, run_dir: Path, name: str) -> tuple[subprocess.Popen | None, str]:
    """Start a run in ``run_dir`` and send it signal ``name`` once it has written two
    checkpoints; the process and the line it logged about stopping."""
    process = battery.start(run_dir)
    if not wait_for(lambda: newest_iteration(run_dir) >= 10, process):
        process.kill()
        return None, ""
    process.send_signal(getattr(signal, name))
    process.wait(timeout=300)
    output = (run_dir.parent / f"{run_dir.name}.out").read_text()
    return process, last_line(output, f"stopped by {name}")


def signals(battery: Battery, reference: dict) -> list[dict]:
    rows = []
    for name in ("SIGTERM", "SIGINT", "SIGUSR1"):
        run_dir = battery.out / f"signal_{name}" / "run"
        process, line = stop_with(battery, run_dir, name)
        stopped_at = newest_iteration(run_dir)
        resumed = battery.run(run_dir)
        ok = (process is not None and process.returncode == STOPPED and f"iteration {stopped_at};" in line
              and resumed.returncode == 0 and identical(run_dir, reference))
        rows.append({
            "scenario": f"{name} mid-run, then the same command again",
            "observed": f"exit {process.returncode if process else 'none'}, checkpoint at iteration {stopped_at}, "
                        f"log: \"{line.split(' - ', 1)[-1]}\"; resumed run exit {resumed.returncode}, final weights "
                        f"{'bit-identical' if ok else 'DIFFERENT'}",
            "passed": ok,
        })
    return rows


def flipped_bytes(battery: Battery, reference: dict) -> dict:
    source = battery.out / "flipped" / "run"
    stop_with(battery, source, "SIGTERM")
    newest = sorted((source / "checkpoints").glob("iter_*.pt"))[-1]
    data = bytearray(newest.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(255 - b for b in data[middle : middle + 64])
    newest.unlink()  # last.pt is a hard link to it: damage this name's copy only
    newest.write_bytes(bytes(data))
    resumed = battery.run(source)
    warning = last_line(resumed.stdout + resumed.stderr, "corrupt")
    ok = resumed.returncode == 0 and bool(warning) and identical(source, reference)
    return {
        "scenario": f"64 bytes flipped inside the newest checkpoint ({newest.name}), then resuming",
        "observed": f"log: \"{warning.split(' - ', 1)[-1]}\"; exit {resumed.returncode}; final weights "
                    f"{'bit-identical' if ok else 'DIFFERENT'}; the damaged file kept as "
                    f"{', '.join(p.name for p in (source / 'checkpoints').glob('*.corrupt')) or 'nothing'}",
        "passed": ok,
    }


def concurrent_run(battery: Battery) -> dict:
    run_dir = battery.out / "concurrent" / "run"
    first = battery.start(run_dir)
    wait_for(lambda: newest_iteration(run_dir) >= 5, first)
    second = battery.run(run_dir)
    first_done = first.wait(timeout=600)
    error = last_line(second.stderr, "error:")
    ok = second.returncode == 2 and "pid" in error and first_done == 0
    return {
        "scenario": "a second run started in the directory of a running one",
        "observed": f"second: exit {second.returncode}, \"{error}\"; first: exit {first_done}",
        "passed": ok,
    }


def disk_full(battery: Battery) -> dict:
    scenario = "the disk fills up during a checkpoint write (a tmpfs with room for one checkpoint and a half)"
    mount_point = battery.out / "disk_full" / "small_disk"
    mount_point.mkdir(parents=True, exist_ok=True)
    checkpoint_size = (battery.out / "reference" / "run" / "checkpoints" / "last.pt").stat().st_size
    size = int(checkpoint_size * 1.5) + 256 * 1024
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount_point)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        return {"scenario": scenario, "observed": f"skipped: cannot mount a tmpfs ({mounted.stderr.strip()})",
                "passed": None}
    try:
        result = battery.run(mount_point / "run")
        error = last_line(result.stderr, "error:")
        checkpoints = sorted((mount_point / "run" / "checkpoints").glob("iter_*.pt"))
        intact = bool(checkpoints) and hashlib.sha256(checkpoints[-1].read_bytes()).hexdigest() in (
            Path(f"{checkpoints[-1]}.sha256").read_text())
        ok = result.returncode == 2 and len(error) < 400 and intact and "Traceback" not in result.stderr
        return {
            "scenario": scenario,
            "observed": f"exit {result.returncode}, \"{error}\"; previous checkpoint "
                        f"{checkpoints[-1].name if checkpoints else '(none)'} {'intact' if intact else 'DAMAGED'}",
            "passed": ok,
        }
    finally:
        subprocess.run(["umount", str(mount_point)], check=False)


def users_folder(battery: Battery) -> dict:
    folder = battery.out / "users_folder" / "my_dataset"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "annotations.csv").write_text("id,label\n1,cat\n")
    before = hashlib.sha256((folder / "annotations.csv").read_bytes()).hexdigest()
    result = battery.run(battery.out / "users_folder" / "run", f"dataset.root={folder}")
    kept = (folder / "annotations.csv").is_file() and hashlib.sha256(
        (folder / "annotations.csv").read_bytes()).hexdigest() == before
    error = last_line(result.stderr, "error:")
    return {
        "scenario": "the demo pointed at a folder of the user's (dataset.root=<folder with a file>)",
        "observed": f"exit {result.returncode}, \"{error}\"; the user's file {'untouched' if kept else 'GONE'}",
        "passed": result.returncode == 2 and kept,
    }


def table(rows: list[dict]) -> str:
    lines = ["| scenario | observed | result |", "|---|---|---|"]
    for row in rows:
        result = {True: "pass", False: "**FAIL**", None: "skipped"}[row["passed"]]
        lines.append(f"| {row['scenario']} | {row['observed'].replace('|', '/')} | {result} |")
    return "\n".join(lines) + "\n"


def record(rows: list[dict], machine: str, seconds: float) -> None:
    """Replace the battery's table in docs/benchmarks.md."""
    text = DOCS.read_text()
    block = (f"{BEGIN}\n{datetime.date.today().isoformat()}, {machine}, {seconds:.0f} s "
             f"(`python scripts/fault_battery.py --record`):\n\n{table(rows)}{END}")
    if BEGIN in text:
        text = text[: text.index(BEGIN)] + block + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n## Fault battery\n\n" + block + "\n"
    atomic_write(DOCS, lambda temp: Path(temp).write_text(text))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="results folder (default runs/fault_battery/<date>)")
    parser.add_argument("--kills", type=int, default=5, help="random SIGKILLs in the first scenario")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    parser.add_argument("--record", action="store_true", help="write the table into docs/benchmarks.md")
    args = parser.parse_args()
    out = (args.out or Path("runs") / "fault_battery" / datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S"))
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    battery = Battery(out)
    started = time.monotonic()
    reference_dir = out / "reference" / "run"
    reference_run = battery.run(reference_dir)
    if reference_run.returncode != 0:
        sys.exit(f"error: the uninterrupted reference run failed:\n{reference_run.stderr[-2000:]}")
    reference = final_weights(reference_dir)
    rows = [random_kills(battery, reference, args.kills, args.seed), flipped_bytes(battery, reference),
            concurrent_run(battery), *signals(battery, reference), disk_full(battery), users_folder(battery)]
    seconds = time.monotonic() - started
    for row in rows:  # the table speaks of the results folder, not of this machine's paths
        row["observed"] = row["observed"].replace(str(out), "<out>")
    write_json({"machine": machine_description(), "seconds": seconds, "rows": rows}, out / "results.json")
    atomic_write(out / "results.md", lambda temp: Path(temp).write_text(table(rows)))
    print(table(rows))
    print(f"results in {out}")
    if args.record:
        record(rows, machine_cell({"machine": machine_description()}), seconds)
    sys.exit(0 if all(row["passed"] is not False for row in rows) else 1)


if __name__ == "__main__":
    main()
