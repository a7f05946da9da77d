"""What the quick start costs: `make run` on a fresh run directory, then again on the same one (the TFX cache).

    python benchmarks/quickstart.py [--fresh 2] [--cached 3]     # ~3 min on 2 cores

Runs the Makefile's `run` target as a user would (`make -s run RUN_DIR=...`: the bundled sample, the default model
trained on a local Ray worker, evaluated and registered in MLflow), and records per run the wall seconds, the lines
it printed and the peak memory of its process tree (the driver, Ray and any helpers, sampled every 0.2 s).
Results: benchmarks/results/quickstart.json.
"""
import argparse
import statistics
import subprocess
import tempfile
import time

from common import REPO_ROOT, TreeMemory, save_results  # first: sys.path, environment


def make_run(run_dir: str) -> dict:
    started = time.time()
    process = subprocess.Popen(["make", "-s", "run", f"RUN_DIR={run_dir}"], cwd=REPO_ROOT, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    memory = TreeMemory(process, started)
    output, _ = process.communicate()
    seconds = time.time() - started
    memory.join()
    if process.returncode != 0:
        raise SystemExit(f"make run failed ({process.returncode}):\n{output[-3000:]}")
    return {"wall_s": round(seconds, 1), "lines": len(output.splitlines()),
            "peak_rss_gib": round(memory.peak() / 2**30, 2)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fresh", type=int, default=2, help="runs, each on a new run directory")
    parser.add_argument("--cached", type=int, default=3, help="reruns on the last fresh run's directory")
    args = parser.parse_args()
    # An install that is out of date (a changed requirements file or setup.py) would be timed as part of the first run.
    subprocess.run(["make", "-s", "install"], cwd=REPO_ROOT, check=True)
    fresh, cached = [], []
    with tempfile.TemporaryDirectory(prefix="quickstart-") as scratch:
        for i in range(args.fresh):
            run_dir = f"{scratch}/run-{i}"
            fresh.append(make_run(run_dir))
            print("fresh", fresh[-1], flush=True)
        for _ in range(args.cached):
            cached.append(make_run(run_dir))
            print("cached", cached[-1], flush=True)
    summary = {name: {"runs": runs, "count": len(runs), "median_wall_s": statistics.median(r["wall_s"] for r in runs),
                      "min_wall_s": min(r["wall_s"] for r in runs), "max_wall_s": max(r["wall_s"] for r in runs),
                      "max_peak_rss_gib": max(r["peak_rss_gib"] for r in runs),
                      "lines": max(r["lines"] for r in runs)}
               for name, runs in (("fresh", fresh), ("cached", cached))}
    summary["cached_share_of_fresh"] = summary["cached"]["median_wall_s"] / summary["fresh"]["median_wall_s"]
    print("results:", save_results("quickstart", summary))


if __name__ == "__main__":
    main()
