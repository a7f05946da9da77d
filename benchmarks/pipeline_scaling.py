"""What a run costs as the data grows, and what Beam's multi-processing DirectRunner changes.

For the bundled sample (2,500 digits), the full MNIST (70,000) and sets 4x and 10x the MNIST (280,000 and
700,000: the MNIST k times, each copy shifted by a pixel so no two images are equal), runs the pipeline as a user would
(`latentforge run --model stacked_ae --epochs 1 --trainer in-process`, a fresh run directory each) with Beam's
default in-memory DirectRunner (1 worker) and with `--direct_running_mode=multi_processing --direct_num_workers=2`,
and records each component's wall time (ML Metadata) and the peak memory of the run's process tree (the driver
and any Beam worker processes, sampled every 0.2 s).

    cd benchmarks && python pipeline_scaling.py            # ~15 min on 2 cores
    python pipeline_scaling.py --sets mnist,mnist_x4,mnist_x10 --runners direct_1_worker   # memory as data grows
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

import numpy as np

from common import MNIST_DIR, REPO_ROOT, TreeMemory, load_results, save_results  # first: sys.path, environment

MULTI = ["--beam-arg=--direct_running_mode=multi_processing", "--beam-arg=--direct_num_workers=2"]
DATA_COMPONENTS = ("ImageExampleGen", "StatisticsGen", "Transform")


def times_mnist(directory: str, times: int) -> str:
    """npz:FILE with the MNIST's train and test splits `times` times over, copy k shifted right by k pixels."""
    from components.image_example_gen import sources
    arrays = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        _, images = sources.read_idx(os.path.join(MNIST_DIR, f"{prefix}-images-idx3-ubyte.gz"), 3)
        _, labels = sources.read_idx(os.path.join(MNIST_DIR, f"{prefix}-labels-idx1-ubyte.gz"), 1)
        arrays[f"x_{split}"] = np.concatenate([np.roll(images, k, axis=2) for k in range(times)])
        arrays[f"y_{split}"] = np.tile(labels, times)
    path = os.path.join(directory, f"mnist-x{times}.npz")
    np.savez(path, **arrays)
    return f"npz:{path}"


def run(source: str, beam_args, run_dir: str) -> dict:
    # `python -m` from the tree's root: the code of this tree (a copy, while the original is being edited).
    command = [sys.executable, "-m", "pipelines.cli", "run", "--source", source, "--model",
               "stacked_ae", "--epochs", "1", "--trainer", "in-process", "--run-dir", run_dir, *beam_args]
    started = time.time()
    log_path = run_dir + ".log"
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO_ROOT)
    memory = TreeMemory(process, started)
    # The console's "[i/N] Component" lines mark when each component starts: the peak within each span is that
    # component's (the local runner runs them one at a time).
    starts, lines = [], []
    for line in process.stdout:
        lines.append(line)
        mark = re.search(r"\[\s*\d+/\d+\] (\w+)", line)
        if mark:
            starts.append((time.time() - started, mark.group(1)))
    process.wait()
    memory.join()
    output = "".join(lines)
    with open(log_path, "w") as log:
        log.write(output)
    if process.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{output[-3000:]}")
    ends = [t for t, _ in starts[1:]] + [time.time() - started]
    peak_by_component = {name: round(memory.peak(start, end) / 1024 ** 3, 2)
                         for (start, name), end in zip(starts, ends)}
    peak = memory.peak()
    from pipelines import metadata
    nodes = metadata.latest_run(os.path.join(run_dir, "latentforge", "metadata.sqlite"), "latentforge")
    seconds = {n.node: round(n.seconds, 1) for n in nodes}
    return {"wall_s": round(time.time() - started, 1), "peak_rss_gib": round(peak / 1024 ** 3, 2),
            "components_s": seconds, "peak_gib_by_component": peak_by_component,
            "data_s": round(sum(seconds[c] for c in DATA_COMPONENTS), 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sets", default="sample,mnist,mnist_x4")
    parser.add_argument("--runners", default="direct_1_worker,multi_processing_2_workers")
    args = parser.parse_args()
    results = load_results("pipeline_scaling") or {}
    with tempfile.TemporaryDirectory(prefix="latentforge-scaling-") as scratch:
        sources = {"sample": f"idx:{os.path.join(REPO_ROOT, 'data', 'mnist-sample')}", "mnist": f"idx:{MNIST_DIR}"}
        for name in args.sets.split(","):
            source = sources.get(name) or times_mnist(scratch, int(name.split("_x")[1]))
            for runner, beam_args in (("direct_1_worker", []), ("multi_processing_2_workers", MULTI)):
                if runner not in args.runners.split(","):
                    continue
                measured = run(source, beam_args, os.path.join(scratch, f"{name}-{runner}"))
                print(f"{name:9s} {runner:27s} wall {measured['wall_s']:7.1f} s  data components "
                      f"{measured['data_s']:6.1f} s  peak {measured['peak_rss_gib']:.2f} GiB  "
                      f"{measured['components_s']}  peak GiB {measured['peak_gib_by_component']}", flush=True)
                results.setdefault(name, {})[runner] = measured
                save_results("pipeline_scaling", results)


if __name__ == "__main__":
    main()
