"""Steps/s of `train --distribute multi_worker` with 1 and 2 worker processes on this machine,
paired in one run (the 1-process run first, then the 2-process run, same options).

    KERAS_BACKEND=torch python bench/bench_multi_worker.py [--steps 40] [--batch-size 32]

Steps/s are read from each run's metrics.csv (`images_per_sec` / global batch), over the rows
after the first 5 steps (compilation and start-up left out). Prints one JSON line.
"""

import argparse
import csv
import json
import os
import socket
import subprocess
import sys
import tempfile

import keras

from keras_ddpm.backend import child_environment
from keras_ddpm.backend import launcher_environment

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def steps_per_second(out, batch_size, skip):
    with open(os.path.join(out, "metrics.csv")) as f:
        rows = [row for row in csv.DictReader(f) if int(row["step"]) > skip]
    rates = [float(row["images_per_sec"]) / batch_size for row in rows]
    return sum(rates) / len(rates)


def run(count, args, folder):
    out = os.path.join(folder, f"{count}-process")
    options = [
        "--preset",
        args.preset,
        "--image-size",
        str(args.image_size),
        "--steps",
        str(args.steps),
        "--batch-size",
        str(args.batch_size),
        "--log-every",
        "1",
        "--sample-every",
        "0",
        "--verbose",
        "0",
        "--out",
        out,
    ]
    ports = [free_port() for _ in range(count)]
    processes = []
    for index in range(count):
        extra = (
            launcher_environment(keras.backend.backend(), index, count, ports) if count > 1 else {}
        )
        distribute = ["--distribute", "multi_worker"] if count > 1 else []
        processes.append(
            subprocess.Popen(
                [sys.executable, "cli.py", "train", *distribute, *options],
                cwd=REPO,
                env=child_environment(keras.backend.backend(), **extra),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    try:
        codes = [process.wait(timeout=1800) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    if codes != [0] * count:
        raise SystemExit(f"{count}-process run failed: exit codes {codes}")
    return steps_per_second(out, args.batch_size, skip=5)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--image-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        one, two = run(1, args, folder), run(2, args, folder)
    print(
        json.dumps(
            {
                "backend": keras.backend.backend(),
                **vars(args),
                "cpus": os.cpu_count(),
                "steps_per_s_1_process": round(one, 3),
                "steps_per_s_2_processes": round(two, 3),
                "speedup": round(two / one, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
