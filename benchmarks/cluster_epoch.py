"""What a cluster whose nodes share no disk costs per epoch: the same pipeline run with 2 Ray Train workers on
(a) two Ray nodes of this machine, 1 CPU each, the second in its own mount namespace, the run directory a bucket
on an S3-compatible server on 127.0.0.1, and (b) one Ray node with 2 CPUs and a local run directory.

    python benchmarks/cluster_epoch.py [--model conv_ae] [--epochs 4] [--batch-size 32]   (as root)

Both read the full MNIST; per-epoch seconds come from the Trainer's metrics.json (`epoch_seconds`: one epoch's
start to the next's on the chief, its checkpoint and report included); epoch 1 (tracing) is left out of the
median. Target: two nodes within 15 % of one node. Results: benchmarks/results/cluster_epoch.json.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import MNIST_DIR, REPO_ROOT, save_results, start_s3  # first: sets up sys.path and the environment
from common import S3_BUCKET as BUCKET

from tests import cluster as cluster_on_one_machine

def metrics_of(run_dir: str) -> dict:
    """The Trainer's metrics.json of the run in `run_dir` (a local directory or the bucket)."""
    if run_dir.startswith("s3://"):
        import boto3  # pylint: disable=import-outside-toplevel
        client = boto3.client("s3")
        prefix = run_dir[len(f"s3://{BUCKET}/"):] + "/latentforge/tfx/Trainer/model_run/"
        keys = [o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix=prefix)["Contents"]]
        key = next(k for k in keys if k.endswith("/metrics.json"))
        return json.loads(client.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    path = next(Path(run_dir, "latentforge", "tfx", "Trainer", "model_run").glob("*/metrics.json"))
    return json.loads(path.read_text())


def one_setting(name, hidden, two_nodes, args):
    cluster = cluster_on_one_machine.Cluster(hidden, hidden.parent, head_cpus=1 if two_nodes else 2,
                                             second_node=two_nodes)
    run_dir = f"s3://{BUCKET}/{name}" if two_nodes else str(hidden.parent / name)
    try:
        started = time.time()
        command = [sys.executable, "-m", "pipelines.cli", "run", "--model", args.model, "--epochs", str(args.epochs),
                   "--batch-size", str(args.batch_size), "--workers", "2", "--cpus-per-worker", "1",
                   "--ray-address", cluster.address, "--source", f"idx:{os.path.abspath(MNIST_DIR)}",
                   "--run-dir", run_dir]
        print(f"{name}: {' '.join(command[1:])}", flush=True)
        result = subprocess.run(command, env={**cluster.env, "PYTHONPATH": REPO_ROOT}, cwd=hidden,
                                capture_output=True, text=True)
        if result.returncode != 0:
            sys.exit(f"{name} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        metrics = metrics_of(run_dir)
    finally:
        cluster.stop()
    seconds = metrics["epoch_seconds"]
    nodes = {w["node"] for w in metrics["workers"]}
    return {"run_dir": run_dir, "nodes": len(nodes), "epoch_seconds": seconds,
            "median_epoch_s": statistics.median(seconds[1:] or seconds), "wall_s": round(time.time() - started, 1)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="conv_ae")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    if not cluster_on_one_machine.available():
        sys.exit("a node in its own mount namespace needs root and unshare")
    server, _ = start_s3()
    work = Path(tempfile.mkdtemp(prefix="cluster-epoch-"))
    results = {"model": args.model, "epochs": args.epochs, "batch_size": args.batch_size, "settings": {}}
    try:
        for name, two_nodes in (("one-node", False), ("two-nodes", True)):
            hidden = work / f"{name}-head-only"
            hidden.mkdir()
            (hidden / "marker").write_text("the head's disk")
            results["settings"][name] = one_setting(name, hidden, two_nodes, args)
            print(name, results["settings"][name], flush=True)
    finally:
        server.kill()
    one, two = (results["settings"][k]["median_epoch_s"] for k in ("one-node", "two-nodes"))
    results["two_over_one"] = two / one
    print(f"results: {save_results('cluster_epoch', results)}")
    print(f"| setting | nodes | median epoch (s) | epochs (s) |\n|---|---:|---:|---|")
    for name, r in results["settings"].items():
        print(f"| {name} | {r['nodes']} | {r['median_epoch_s']:.1f} | {', '.join(f'{s:.1f}' for s in r['epoch_seconds'])} |")
    print(f"two nodes / one node: {two / one:.3f}")


if __name__ == "__main__":
    main()
