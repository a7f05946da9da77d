"""Does the search pay? A `--tune` search on the full MNIST, then the best values against the preset at equal
wall-clock, both trained and scored by benchmarks/generative.py in one run.

    python benchmarks/tuning.py --model dcgan --trials 12 --budget-minutes 60 --epochs 4 [--minutes 15]
    python benchmarks/tuning.py --model conv_vae --trials 12 --budget-minutes 20 --epochs 4 --search-only

Step 1 runs `latentforge run --model M --tune SPACE --tune-trials N --tune-budget-minutes B --epochs E` (ASHA,
`--cpus-per-worker 1`: two single-worker trials at a time on 2 cores) on the full MNIST in a fresh run directory
and reads the RayTuner's search.json: every trial's values, curve and status, and the time ASHA saved. Step 2
runs `generative.py --minutes T --only M,M@tuned --set M@tuned:FIELD=VALUE...`: the preset and the tuned values,
each trained for T minutes and scored from its SavedModel (FID, KID, precision/recall in the labelled feature
space, 1,000 samples). Results: benchmarks/results/tuning-M.json (the search) and generative.json (the
comparison, keys M and M@tuned).
"""
import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile

from common import MNIST_DIR, REPO_ROOT, RESULTS_DIR, load_results, save_results  # first: sets up sys.path and the environment


def search(args, run_dir: str) -> dict:
    command = [sys.executable, "-m", "pipelines.cli", "run", "--model", args.model, "--source", f"idx:{MNIST_DIR}",
               "--epochs", str(args.epochs), "--tune", args.space, "--tune-trials", str(args.trials),
               "--tune-budget-minutes", str(args.budget_minutes), "--cpus-per-worker", "1", "--run-dir", run_dir]
    print(" ".join(command[1:]), flush=True)
    result = subprocess.run(command, cwd=REPO_ROOT)
    found = glob.glob(os.path.join(run_dir, "latentforge", "tfx", "RayTuner", "tuner_results", "*", "search.json"))
    if not found:
        sys.exit(f"the search left no search.json (exit code {result.returncode})")
    # The search's picture (every trial's curve, each field against the trials' best) beside its record.
    shutil.copy(os.path.join(os.path.dirname(found[0]), "search.png"),
                os.path.join(RESULTS_DIR, f"tuning-{args.model}.png"))
    with open(found[0]) as f:
        return json.load(f)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="dcgan")
    parser.add_argument("--space", default="default", help="a space file, or the family's default")
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--budget-minutes", type=float, default=60)
    parser.add_argument("--epochs", type=int, default=4, help="epochs per trial (ASHA's rungs divide them)")
    parser.add_argument("--minutes", type=float, default=15, help="step 2's training budget per model")
    parser.add_argument("--compare-only", action="store_true",
                        help="skip step 1: compare with the best values in results/tuning-MODEL.json")
    parser.add_argument("--search-only", action="store_true", help="skip step 2")
    args = parser.parse_args()
    if args.compare_only:
        record = load_results(f"tuning-{args.model}")
    else:
        record = search(args, tempfile.mkdtemp(prefix="tuning-"))
        print(f"results: {save_results(f'tuning-{args.model}', record)}")
    trials = record["trials"]
    print(f"{len(trials)} trials in {record['seconds'] / 60:.1f} min; best {record['best_trial']} "
          f"{record['metric']} {record['best']:.4g}: {record['best_config']}; ASHA stopped "
          f"{sum(t['status'] == 'stopped' for t in trials)} and saved {record['epochs_saved']} epochs "
          f"({record['seconds_saved'] / 60:.1f} min)")
    if args.search_only:
        return
    tuned = [f"--set={args.model}@tuned:{field}={value!r}" for field, value in record["best_config"].items()]
    command = [sys.executable, "generative.py", "--minutes", str(args.minutes), "--only",
               f"{args.model},{args.model}@tuned", *tuned]
    print(" ".join(command[1:]), flush=True)
    subprocess.run(command, cwd=os.path.join(REPO_ROOT, "benchmarks"), check=True)


if __name__ == "__main__":
    main()
