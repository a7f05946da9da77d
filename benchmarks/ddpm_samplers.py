"""DDPM samplers against quality on one trained model: DDIM (eta 0 and 1), DPM-Solver++(2M) and full ancestral
sampling, each timed and scored on the same seeds, without retraining.

    python benchmarks/ddpm_samplers.py WEIGHTS_DIR [--samples 1000] [--label=-15min]
                                       [--runs ddim/uniform/20,ddim/uniform/50/1,dpm_solver/quadratic/15,...]

WEIGHTS_DIR is what benchmarks/generative.py keeps of each model it trains (`"weights"` in its results: the
trained weights, EMA included, and every config field); the metric network it trained sits beside it (`metric`).
Each run (SAMPLER/SPACING/STEPS[/ETA], trainers/diffusion.py) draws `--samples` images from the EMA weights in
batches of 250 from the same seeds, scored as the ModelEvaluator scores them (FID, KID, mode entropy and KL against
the training digits' features). "ancestral" is DDPM's sampler with all T steps (DDIM at eta = 1 and T steps).
Results: benchmarks/results/ddpm_samplers.json, pictures benchmarks/results/ddpm-samplers-*.png, a Markdown table.
"""
import argparse
import json
import os

from common import RESULTS_DIR, Timer, load_mnist, load_results, save_results  # first: sys.path, environment
import numpy as np

from evaluation import figures, scoring
from trainers import job as training, registry

BATCH = 250
DEFAULT_RUNS = ("ddim/uniform/10", "ddim/uniform/20", "ddim/uniform/50", "ddim/quadratic/10", "ddim/quadratic/20",
                "ddim/quadratic/50", "ddim/uniform/50/1", "ddim/uniform/100/1", "dpm_solver/uniform/20",
                "dpm_solver/quadratic/10", "dpm_solver/quadratic/15", "dpm_solver/quadratic/20",
                "dpm_solver/quadratic/25")


def load_model(directory):
    with open(os.path.join(directory, "config.json")) as f:
        saved = json.load(f)
    config = registry.make_config(saved["model"], saved["config"])
    model = registry.get_model(saved["model"]).build(config, (28, 28, 1))
    training.load_weights(model, directory)  # generative.py saved them as save_state does: `weights` in directory
    return model, saved


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("weights", help="a model's weights directory kept by benchmarks/generative.py")
    parser.add_argument("--metric", help="the metric network's SavedModel (default: WEIGHTS/../metric)")
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--runs", default=",".join(DEFAULT_RUNS), help="SAMPLER/SPACING/STEPS[/ETA], ...")
    parser.add_argument("--no-ancestral", action="store_true", help="skip the full T-step ancestral sampler")
    parser.add_argument("--label", default="", help="suffix of the result key")
    args = parser.parse_args()

    model, saved = load_model(args.weights)
    network = scoring.MetricNetwork(args.metric or os.path.join(os.path.dirname(args.weights.rstrip("/")), "metric"))
    x_train, y_train, _, _ = load_mnist()
    train_features, _ = network(x_train)
    reference = scoring.FeatureReference.from_features(train_features, y_train, 10)
    timesteps = model.diffusion.timesteps

    runs = []
    for text in filter(None, args.runs.split(",")):
        sampler, spacing, steps, *eta = text.split("/")
        runs.append((text.replace("/", "_"), sampler, spacing, int(steps), float(eta[0]) if eta else 0.0))
    if not args.no_ancestral:
        runs.append((f"ancestral_{timesteps}", "ddim", "uniform", timesteps, 1.0))

    key = saved["model"] + args.label
    results = load_results("ddpm_samplers")
    rows = {}
    for _, sampler, spacing, _, _ in runs:  # traces each sampler once: no row's time includes it
        model.generate(1, 0, steps=2, sampler=sampler, spacing=spacing)
    for label, sampler, spacing, steps, eta in runs:
        with Timer() as timer:
            images = np.concatenate([(model.generate(min(BATCH, args.samples - start), 1000 + start, steps=steps,
                                                     eta=eta, sampler=sampler, spacing=spacing).numpy() + 1.0) / 2.0
                                     for start in range(0, args.samples, BATCH)])
        rows[label] = {"sampler": sampler, "spacing": spacing, "steps": steps, "eta": eta, "samples": args.samples,
                       "s_per_1000_images": 1000 * timer.seconds / args.samples,
                       **scoring.generative_scores(images, network, reference)}
        figures.save_png(os.path.join(RESULTS_DIR, f"ddpm-samplers{args.label}-{label}.png"),
                         figures.image_grid(images[:64], 8))
        print(label, rows[label], flush=True)
        results[key] = {"weights": os.path.abspath(args.weights), "config": saved["config"], "samplers": rows}
        save_results("ddpm_samplers", results)

    ancestral = rows.get(f"ancestral_{timesteps}")
    print(f"\n{key} ({args.samples} images each, batches of {BATCH}):\n"
          "| sampler | spacing | steps | eta | s per 1,000 images | speed-up vs ancestral | FID | FID / ancestral | "
          "KID x1e3 | mode entropy |\n|---|---|---|---|---|---|---|---|---|---|")
    for label, r in rows.items():
        speed = ancestral["s_per_1000_images"] / r["s_per_1000_images"] if ancestral else float("nan")
        ratio = r["fid"] / ancestral["fid"] if ancestral else float("nan")
        print(f"| {r['sampler']} | {r['spacing']} | {r['steps']} | {r['eta']:g} | {r['s_per_1000_images']:.1f} | {speed:.0f}x | "
              f"{r['fid']:.2f} | {ratio:.2f} | {r['kid_x1e3']:.1f} | {r['mode_entropy']:.3f} |")


if __name__ == "__main__":
    main()
