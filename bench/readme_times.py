"""The wall time of every command the README states a time for, run as written, in a scratch folder:
the README's times come from this script's output (docs/logs/readme_times.log), with the machine.

    python bench/readme_times.py                       # every README command, a table at the end
    python bench/readme_times.py --only demo evaluate  # some of them
    python bench/readme_times.py --log docs/logs/readme_times.log
    python bench/readme_times.py --only compare-tune train-tune --log docs/logs/readme_times_tune.log

Each command runs once, in order (the tour's later commands read what earlier ones wrote), with
the environment's default thread settings, on a quiet machine (the load average before each run is
printed: a busy machine makes every figure larger). Needs the shared data ($MINDREF_DATA).
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
USERS = '{"user": "a", "history": [50, 172, 181]}\n{"user": "b", "history": [1, 121]}\n'
# (name, command) in the README's order; {bin} is this Python's scripts folder, {py} this Python,
# {root} the checkout
COMMANDS = (
    ("demo", "{bin}mindref demo"),
    ("train", "{bin}mindref train --data-format ml-100k --out runs/ml100k"),
    ("evaluate", "{bin}mindref evaluate --model runs/ml100k --json"),
    ("train-early-stop", "{bin}mindref train --data-format ml-100k --epochs 30 --early-stop NDCG@50 "
                         "--out runs/ml-es"),
    ("compare-beauty", "{bin}mindref compare --data-format sequences"),
    ("compare-tune", "{bin}mindref compare --data-format ml-100k --tune 10m"),
    ("train-tune", "{bin}mindref train --data-format ml-100k --tune 10m --out runs/tuned"),
    ("train_bench", "{py} {root}/bench/train_bench.py --data beauty"),
    ("quality-short", "{py} {root}/bench/quality.py --data ml-100k --only MostPopular ItemCF base "
                      "--epochs 2 --out ml.jsonl"),
    ("export", "{bin}mindref export --model runs/ml100k --out bundles/ml100k"),
    ("retrieve", "{bin}mindref retrieve --bundle bundles/ml100k --history 50,172,181,1,121 -n 20"),
    ("retrieve-users", "{bin}mindref retrieve --bundle bundles/ml100k --users users.jsonl "
                       "--out results.jsonl"),
    ("batch-local", "{bin}mindref batch --bundle bundles/ml100k --users users.jsonl --out recs "
                    "--engine local"),
    ("batch-ray", "{bin}mindref batch --bundle bundles/ml100k --users users.jsonl --out recs-ray "
                  "--engine ray"),
    ("explain", "{bin}mindref explain --bundle bundles/ml100k --history 50,172,181,1,121,117,300,288"),
)


def machine() -> str:
    model = ""
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                     if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor()
    return f"{os.cpu_count()} CPUs ({model}), Python {platform.python_version()}, {platform.system()}"


def duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", choices=[n for n, _ in COMMANDS], help="these commands only")
    ap.add_argument("--log", type=Path, help="also write the table to this file")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = ap.parse_args()
    bindir = Path(sys.executable).parent
    work = Path(tempfile.mkdtemp(prefix="readme-times-"))
    (work / "users.jsonl").write_text(USERS)
    rows, status = [], 0
    print(f"machine: {machine()}; scratch: {work}", flush=True)
    try:
        for name, template in COMMANDS:
            if args.only and name not in args.only:
                continue
            command = template.format(bin=f"{bindir}/", py=sys.executable, root=ROOT)
            load = os.getloadavg()[0]
            t0 = time.perf_counter()
            done = subprocess.run(command, shell=True, cwd=work, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True)
            seconds = time.perf_counter() - t0
            ok = done.returncode == 0
            status |= not ok
            rows.append((name, seconds, load, ok))
            tail = "" if ok else f"  FAILED ({done.returncode}): {done.stderr.strip().splitlines()[-1:]}"
            print(f"{name:<18} {duration(seconds):>9}   load before {load:.2f}{tail}", flush=True)
    except KeyboardInterrupt:
        print("readme_times.py: interrupted; the rows above are complete", file=sys.stderr)
        status = 130
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    table = [f"# python bench/readme_times.py  ({time.strftime('%Y-%m-%d')}; {machine()})",
             "| command | wall time | load average before | ok |", "| --- | --- | --- | --- |"]
    table += [f"| {name} | {duration(s)} | {load:.2f} | {'yes' if ok else 'NO'} |"
              for name, s, load, ok in rows]
    print("\n".join(table))
    if args.log:
        args.log.write_text("\n".join(table) + "\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
