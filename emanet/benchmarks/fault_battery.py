"""The fault battery: what a long run on a shared, preemptible machine meets, done to the
demo, and what came of it.

Every scenario runs ``train.py``, ``evaluate.py`` or ``scripts/predict.py`` in a
subprocess, as a user or a cluster would, around the same small demo run (a few hundred
iterations on CPU), and checks that nothing is lost and nothing is silently wrong (the
final weights of interrupted trainings compared with one uninterrupted run's):

* SIGKILL at random moments (checkpoints are written every few iterations, so some kills
  land inside a write), re-running the same command each time until it finishes;
* 64 bytes flipped inside the newest checkpoint of a stopped run, then resuming;
* a second run started in the directory of a running one;
* SIGTERM, SIGINT and SIGUSR1 mid-run, then resuming;
* a disk that fills up during a checkpoint write (a small tmpfs; needs root, else skipped);
* the demo pointed at a folder of the user's;
* evaluate.py and predict.py pointed at a training run's directory, or given only its
  checkpoint; a training asking the shared data root for another demo size; a finished
  run re-run with fewer iterations; run directories under a file or read-only;
* predict.py over a folder with a truncated photo, macOS sidecars and a hidden folder,
  and stopped with Ctrl-C then resumed; two evaluations in one directory;
* typos on the command line; an evaluation that runs out of memory; bad label values in
  either split; a training image damaged mid-run; a checkpoint of other model settings;
  ``sha256sum -c`` of a copied ``last.pt``.

Results go to a results folder (``results.md``, ``results.json`` and each scenario's
runs); :func:`record` writes the table into the published benchmarks.md.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from emanet.benchmarks.fault_runs import (
    ITERATIONS,
    STOPPED,
    Battery,
    copy_of_reference,
    damaged_copy_of_the_data,
    final_weights,
    identical,
    last_line,
    newest_iteration,
    one_line,
    photo_folder,
    tree_digests,
    wait_for,
)
from emanet.benchmarks.records import machine_description, replace_section
from emanet.errors import EmanetError
from emanet.io import atomic_write, write_json


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
        # One line of a terminal's length or so, however long the results folder's path.
        short = len(error.replace(str(battery.out), "<out>")) < 400
        ok = result.returncode == 2 and short and intact and "Traceback" not in result.stderr
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


def jobs_into_a_training_run(battery: Battery) -> dict:
    """evaluate.py and predict.py pointed at a finished training run's own directory."""
    run_dir = copy_of_reference(battery, "into_training_run")
    before = tree_digests(run_dir)
    photos = battery.data_root / "demo" / "VOC2012" / "JPEGImages"
    evaluated = battery.script("evaluate.py", f"checkpoint={run_dir}", f"hydra.run.dir={run_dir}",
                               "runtime.progress=false")
    predicted = battery.script("scripts/predict.py", f"checkpoint={run_dir}", f"input={photos / 'demo_val_00000.jpg'}",
                               f"hydra.run.dir={run_dir}", "runtime.progress=false")
    kept = tree_digests(run_dir, leave_out=("eval/", "predict/")) == before
    own = [path.relative_to(run_dir).as_posix() for path in sorted(run_dir.glob("*/*")) if path.parent.name in
           ("eval", "predict")]
    note = one_line(evaluated, "leaves alone")
    ok = evaluated.returncode == 0 and predicted.returncode == 0 and kept and len(own) == 2
    return {
        "scenario": "evaluate.py and then predict.py with hydra.run.dir=<a finished training run>",
        "observed": f"exit {evaluated.returncode} and {predicted.returncode}; log: \"{note}\"; the training run's "
                    f"{len(before)} files {'unchanged' if kept else 'CHANGED'}; written into {', '.join(own)}",
        "passed": ok,
    }


def evaluation_from_the_runs_config(battery: Battery) -> dict:
    """evaluate.py given only the checkpoint of a run trained on a small demo: the run's
    dataset (8 training and 2 val images) is scored, not the default demo's 60."""
    run_dir = battery.out / "reference" / "run"
    marker = battery.data_root / "demo" / "VOC2012" / "demo_dataset.json"
    built = marker.read_bytes()
    out = battery.out / "from_run_config" / "evaluation"
    result = battery.script("evaluate.py", f"checkpoint={run_dir / 'checkpoints' / 'last.pt'}",
                            "eval.save_predictions=true", f"hydra.run.dir={out}", "runtime.progress=false")
    scored = len(list((out / "predictions").glob("*.png"))) if (out / "predictions").is_dir() else 0
    unchanged = marker.read_bytes() == built
    note = one_line(result, "starting from")
    return {
        "scenario": "evaluate.py checkpoint=<a run trained with dataset.generate.num_train=8 num_val=2>, nothing else",
        "observed": f"exit {result.returncode}; log: \"{note}\"; {scored} val images scored; the data root "
                    f"{'not rebuilt' if unchanged else 'REBUILT'}",
        "passed": result.returncode == 0 and scored == 2 and unchanged,
    }


def another_demo_size(battery: Battery) -> dict:
    marker = battery.data_root / "demo" / "VOC2012" / "demo_dataset.json"
    built = marker.read_bytes()
    result = battery.run(battery.out / "demo_size" / "run", "dataset.generate.num_train=16")
    unchanged = marker.read_bytes() == built
    return {
        "scenario": "a training with dataset.generate.num_train=16 on the data root of the runs with 8",
        "observed": f"exit {result.returncode}, \"{one_line(result)}\"; the data root "
                    f"{'untouched' if unchanged else 'REBUILT'}",
        "passed": result.returncode == 2 and unchanged and len(result.stderr.strip().splitlines()) == 1,
    }


def resumed_beyond_its_schedule(battery: Battery) -> dict:
    """A finished run re-run with fewer iterations than its checkpoint has."""
    run_dir = copy_of_reference(battery, "beyond_schedule")
    trained = json.loads((run_dir / "metrics.json").read_text())
    result = battery.run(run_dir, "schedule.iterations=100")
    metrics = json.loads((run_dir / "metrics.json").read_text()) if result.returncode == 0 else {}
    ok = (metrics.get("iteration") == ITERATIONS and metrics.get("mIoU") == trained["mIoU"]
          and metrics.get("train_seconds") == trained["train_seconds"])
    return {
        "scenario": f"a finished {ITERATIONS}-iteration run re-run with schedule.iterations=100",
        "observed": f"exit {result.returncode}; metrics.json: iteration {metrics.get('iteration')}, train_seconds "
                    f"{metrics.get('train_seconds')} (the run's {trained['train_seconds']}), mIoU "
                    f"{'the same' if metrics.get('mIoU') == trained['mIoU'] else 'DIFFERENT'}",
        "passed": ok,
    }


def unwritable_run_directories(battery: Battery) -> list[dict]:
    rows = []
    blocker = battery.out / "unwritable" / "notes.txt"
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("a file, not a folder\n")
    checkpoint = f"checkpoint={battery.out / 'reference' / 'run'}"
    photo = f"input={battery.data_root / 'demo' / 'VOC2012' / 'JPEGImages' / 'demo_val_00000.jpg'}"
    result = battery.script("scripts/predict.py", checkpoint, photo, f"hydra.run.dir={blocker / 'run'}")
    rows.append({
        "scenario": "predict.py with hydra.run.dir under a regular file",
        "observed": f"exit {result.returncode}, \"{one_line(result)}\"",
        "passed": result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1,
    })
    scenario = "predict.py with hydra.run.dir in a read-only folder (a tmpfs mounted read-only)"
    mount_point = battery.out / "unwritable" / "read_only"
    mount_point.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mount_point)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        rows.append({"scenario": scenario, "observed": f"skipped: cannot mount a tmpfs ({mounted.stderr.strip()})",
                     "passed": None})
        return rows
    try:
        result = battery.script("scripts/predict.py", checkpoint, photo, f"hydra.run.dir={mount_point / 'run'}")
    finally:
        subprocess.run(["umount", str(mount_point)], check=False)
    rows.append({
        "scenario": scenario,
        "observed": f"exit {result.returncode}, \"{one_line(result)}\"",
        "passed": result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1,
    })
    return rows


def predict_with_bad_files(battery: Battery) -> dict:
    """A folder as it comes from a phone copied on a Mac: a truncated photo, AppleDouble
    sidecars, a hidden thumbnail folder."""
    folder = photo_folder(battery, "bad_files", 6)
    good = (folder / "IMG_0000.jpg").read_bytes()
    (folder / "IMG_0099.jpg").write_bytes(good[: len(good) // 2])  # cut short, as by a failed copy
    (folder / "._IMG_0000.jpg").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        ")
    (folder / ".thumbs").mkdir()
    shutil.copy(folder / "IMG_0001.jpg", folder / ".thumbs" / "IMG_0001.jpg")
    run_dir = battery.out / "bad_files" / "run"
    result = battery.script("scripts/predict.py", f"checkpoint={battery.out / 'reference' / 'run'}", f"input={folder}",
                            "eval=ss", f"hydra.run.dir={run_dir}", "runtime.progress=false")
    record = json.loads((run_dir / "predictions.json").read_text()) if (run_dir / "predictions.json").is_file() else {}
    written = sorted(path.stem for path in (run_dir / "predictions").rglob("*.png")) if record else []
    ok = (result.returncode == 0 and len(written) == 6 and list(record.get("skipped", {})) == ["IMG_0099"]
          and not any(name.startswith(".") for name in written))
    return {
        "scenario": "predict.py over a folder of 6 photos, a truncated one, an AppleDouble `._` sidecar and a hidden "
                    "`.thumbs/` folder",
        "observed": f"exit {result.returncode}; log: \"{one_line(result, 'skipping')}\", then \""
                    f"{one_line(result, 'segmented')}\"; {len(written)} outputs, the skipped file listed in "
                    "predictions.json",
        "passed": ok,
    }


def predict_interrupted(battery: Battery) -> dict:
    """Ctrl-C in the middle of a prediction, then the same command again: the outputs equal
    those of an uninterrupted run."""
    folder = photo_folder(battery, "predict_stopped", 120)
    arguments = [f"checkpoint={battery.out / 'reference' / 'run'}", f"input={folder}", "eval=ms_flip",
                 "runtime.progress=false", "runtime.threads=1"]
    run_dir = battery.out / "predict_stopped" / "run"
    process = subprocess.Popen([sys.executable, str(battery.repo / "scripts" / "predict.py"), *arguments,
                                f"hydra.run.dir={run_dir}"], cwd=battery.out, env=battery.env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: len(list((run_dir / "predictions").glob("*.png"))) >= 10, process)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=300)
    record = json.loads((run_dir / "predictions.json").read_text())
    listed = len(record["images"])
    resumed = battery.script("scripts/predict.py", *arguments, f"hydra.run.dir={run_dir}")
    whole = battery.out / "predict_stopped" / "whole"
    reference = battery.script("scripts/predict.py", *arguments, f"hydra.run.dir={whole}")
    same = resumed.returncode == 0 and reference.returncode == 0 and tree_digests(run_dir / "predictions") == (
        tree_digests(whole / "predictions"))
    line = stderr.strip().splitlines()[-1] if stderr.strip() else ""
    ok = process.returncode == 130 and len(stderr.strip().splitlines()) == 1 and same and 0 < listed < 120
    return {
        "scenario": "Ctrl-C (SIGINT) during predict.py over 120 photos, then the same command again",
        "observed": f"exit {process.returncode}, \"{line}\"; predictions.json lists {listed}; the re-run: exit "
                    f"{resumed.returncode}, \"{one_line(resumed, 'resuming')}\"; outputs "
                    f"{'byte-identical to' if same else 'DIFFERENT from'} an uninterrupted run's",
        "passed": ok,
    }


def concurrent_evaluations(battery: Battery) -> dict:
    """A second evaluation started in the directory of a running one (300 val images at three
    scales with flips: tens of seconds)."""
    run_dir = battery.out / "concurrent_eval" / "run"
    data_root = battery.out / "concurrent_eval" / "data"
    arguments = [f"checkpoint={battery.out / 'reference' / 'run'}", f"data_root={data_root}",
                 "dataset.generate.num_val=300", "eval=ms_flip", "eval.scales=[1.0,2.0,3.0]", "runtime.progress=false",
                 f"hydra.run.dir={run_dir}"]
    first = subprocess.Popen([sys.executable, str(battery.repo / "evaluate.py"), *arguments], cwd=battery.out,
                             env=battery.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: (run_dir / "evaluate.lock").is_file(), first)
    second = battery.script("evaluate.py", *arguments)
    first_running = first.poll() is None
    first.communicate(timeout=600)
    ok = (second.returncode == 2 and "in use by another evaluation" in second.stderr and first.returncode == 0
          and first_running)
    return {
        "scenario": "a second evaluate.py started with the hydra.run.dir of a running one",
        "observed": f"second: exit {second.returncode}, \"{one_line(second)}\"; first: "
                    f"{'still running then, ' if first_running else 'FINISHED BEFORE, '}exit {first.returncode}",
        "passed": ok,
    }


def typos(battery: Battery) -> list[dict]:
    rows = []
    for arguments in (["+schedule.iteratons=5"], ["schedule.iteratons=5"], ["experiment=nonexistent"]):
        run_dir = battery.out / "typos" / arguments[0].strip("+").replace("=", "_")
        result = battery.script("train.py", *arguments, f"hydra.run.dir={run_dir}")
        rows.append({
            "scenario": f"train.py {' '.join(arguments)}",
            "observed": f"exit {result.returncode}, \"{one_line(result)[:300]}\"; run directory "
                        f"{'created' if run_dir.exists() else 'not created'}",
            "passed": result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1 and not run_dir.exists(),
        })
    return rows


# evaluate.py with the address space limited to what its imports map plus 1 GiB.
LIMITED_EVALUATE = """
import resource, runpy, sys
import emanet.engine.evaluate, hydra, torch
with open("/proc/self/status") as status:
    mapped = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
resource.setrlimit(resource.RLIMIT_AS, (mapped + 2**30, mapped + 2**30))
sys.argv = ["evaluate.py", *sys.argv[1:]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def out_of_memory(battery: Battery) -> dict:
    scenario = "evaluate.py eval.mode=whole eval.scales=[64.0] with 1 GiB of address space left"
    if not Path("/proc/self/status").is_file():
        return {"scenario": scenario, "observed": "skipped: no /proc/self/status", "passed": None}
    result = subprocess.run(
        [sys.executable, "-c", LIMITED_EVALUATE, f"checkpoint={battery.out / 'reference' / 'run'}", "eval=ss",
         "eval.mode=whole", "eval.scales=[64.0]", "runtime.threads=1", "runtime.progress=false",
         f"hydra.run.dir={battery.out / 'out_of_memory' / 'run'}"],
        cwd=battery.repo, env=battery.env, capture_output=True, text=True, timeout=600,
    )
    return {
        "scenario": scenario,
        "observed": f"exit {result.returncode}, \"{one_line(result)}\"",
        "passed": result.returncode == 2 and "Traceback" not in result.stderr and "out of memory" in result.stderr,
    }


def bad_labels(battery: Battery) -> list[dict]:
    """A label value that is neither a class nor 255, in the train split and in the val split."""
    from PIL import Image

    rows = []
    for split in ("train", "val"):
        root = damaged_copy_of_the_data(battery, f"bad_{split}_label")
        path = root / "SegmentationClass" / f"demo_{split}_00001.png"
        with Image.open(path) as label:
            pixels = bytearray(label.tobytes())
            pixels[:40] = bytes([7]) * 40
            damaged = Image.frombytes("P", label.size, bytes(pixels))
            damaged.putpalette(label.getpalette())
        damaged.save(path)
        run_dir = battery.out / f"bad_{split}_label" / "run"
        result = battery.run(run_dir, f"dataset.root={root}")
        checkpoints = list((run_dir / "checkpoints").glob("iter_*.pt"))
        rows.append({
            "scenario": f"a {split} label holding value 7 (the demo has classes 0-4)",
            "observed": f"exit {result.returncode}, \"{one_line(result)}\"; {len(checkpoints)} iterations trained",
            "passed": result.returncode == 2 and not checkpoints and "value 7" in result.stderr,
        })
    return rows


def bad_image_mid_run(battery: Battery, reference: dict) -> dict:
    """A training image cut short while the run is under way, then restored and resumed."""
    root = damaged_copy_of_the_data(battery, "bad_image_mid_run")
    run_dir = battery.out / "bad_image_mid_run" / "run"
    image = root / "JPEGImages" / "demo_train_00003.jpg"
    intact = image.read_bytes()
    process = battery.start(run_dir, f"dataset.root={root}")
    wait_for(lambda: newest_iteration(run_dir) >= 10, process)
    image.write_bytes(intact[: len(intact) // 3])
    process.wait(timeout=600)
    output = (run_dir.parent / f"{run_dir.name}.out").read_text()
    stopped_at = newest_iteration(run_dir)
    image.write_bytes(intact)
    resumed = battery.run(run_dir, f"dataset.root={root}")
    ok = (process.returncode == 2 and f"written at iteration {stopped_at}" in output and resumed.returncode == 0
          and identical(run_dir, reference))
    return {
        "scenario": "a training image cut short mid-run, then restored and the same command run again",
        "observed": f"exit {process.returncode}, \"{last_line(output, 'error:')}\"; the resumed run: exit "
                    f"{resumed.returncode}, final weights {'bit-identical' if ok else 'DIFFERENT'}",
        "passed": ok,
    }


def checkpoint_records(battery: Battery) -> list[dict]:
    """A checkpoint evaluated with another model setting; last.pt copied alone with its digest."""
    run_dir = battery.out / "reference" / "run"
    result = battery.script("evaluate.py", f"checkpoint={run_dir}", "model.ema.num_bases=32",
                            f"hydra.run.dir={battery.out / 'mismatch' / 'run'}")
    rows = [{
        "scenario": "evaluate.py of the run's checkpoint with model.ema.num_bases=32 (trained with 16)",
        "observed": f"exit {result.returncode}, \"{one_line(result)[:260]}...\"",
        "passed": result.returncode == 2 and "model.ema.num_bases=16 (configured: 32)" in result.stderr,
    }]
    copy = battery.out / "copied_checkpoint"
    copy.mkdir(parents=True, exist_ok=True)
    for name in ("last.pt", "last.pt.sha256"):
        shutil.copy(run_dir / "checkpoints" / name, copy / name)
    checked = subprocess.run(["sha256sum", "-c", "last.pt.sha256"], cwd=copy, capture_output=True, text=True)
    rows.append({
        "scenario": "`sha256sum -c last.pt.sha256` in a folder holding copies of last.pt and last.pt.sha256 alone",
        "observed": f"exit {checked.returncode}, \"{(checked.stdout + checked.stderr).strip()}\"",
        "passed": checked.returncode == 0,
    })
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| scenario | observed | result |", "|---|---|---|"]
    for row in rows:
        result = {True: "pass", False: "**FAIL**", None: "skipped"}[row["passed"]]
        lines.append(f"| {row['scenario']} | {row['observed'].replace('|', '/')} | {result} |")
    return "\n".join(lines) + "\n"


def record(docs: Path, rows: list[dict], machine: str, seconds: float) -> None:
    """Replace the battery's table in ``docs``'s benchmarks.md."""
    body = (f"{datetime.date.today().isoformat()}, {machine}, {seconds:.0f} s "
            f"(`python scripts/fault_battery.py --record`):\n\n{table(rows)}")
    replace_section(docs, "fault-battery", body, "Fault battery")


class ReferenceRunError(EmanetError):
    """The uninterrupted run every other is compared with failed: nothing can be compared."""


def run_battery(repo: Path, out: Path, kills: int = 5, seed: int = 0) -> tuple[list[dict], float]:
    """Every scenario, on the entry points of the checkout ``repo``, with results under
    ``out`` (results.json, results.md, each scenario's runs): a row per scenario (``passed``:
    True, False, or None where skipped) and the seconds the battery took. ``kills``: random
    SIGKILLs of the first scenario, at moments drawn with ``seed``."""
    out.mkdir(parents=True, exist_ok=True)
    battery = Battery(repo, out)
    started = time.monotonic()
    reference_dir = out / "reference" / "run"
    reference_run = battery.run(reference_dir)
    if reference_run.returncode != 0:
        raise ReferenceRunError(f"the uninterrupted reference run failed:\n{reference_run.stderr[-2000:]}")
    reference = final_weights(reference_dir)
    rows = [random_kills(battery, reference, kills, seed), flipped_bytes(battery, reference),
            concurrent_run(battery), *signals(battery, reference), disk_full(battery), users_folder(battery),
            jobs_into_a_training_run(battery), evaluation_from_the_runs_config(battery), another_demo_size(battery),
            resumed_beyond_its_schedule(battery), *unwritable_run_directories(battery), predict_with_bad_files(battery),
            predict_interrupted(battery), concurrent_evaluations(battery), *typos(battery), out_of_memory(battery),
            *bad_labels(battery), bad_image_mid_run(battery, reference), *checkpoint_records(battery)]
    seconds = time.monotonic() - started
    for row in rows:  # the table speaks of the results folder, not of this machine's paths
        row["observed"] = row["observed"].replace(str(out), "<out>")
    write_json({"machine": machine_description(), "seconds": seconds, "rows": rows}, out / "results.json")
    atomic_write(out / "results.md", lambda temp: Path(temp).write_text(table(rows)))
    return rows, seconds
