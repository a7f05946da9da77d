"""Model server throughput: requests/s and p50/p99 latency of `reconstruct`, batching on vs off, 1 vs 2 replicas.

    python benchmarks/serving_load.py [--requests 2000] [--clients 16] [--images-per-request 1]

A stacked autoencoder (trained 1 epoch on the real MNIST: the weights do not change the cost) is exported as the
pipeline exports it and served by serving/server.py on a local Ray Serve. Each configuration gets a fresh
deployment, 100 warm-up requests, then `--requests` requests of real test digits from `--clients` threads, each
on its own keep-alive connection; bodies are encoded before the clock starts and answers are checked for status
200 only (no JSON decoding on the client), so the client costs as little CPU as it can. The client threads share
the machine with the server: on 2 cores this is the whole machine's figure, not the server's alone.
Results: benchmarks/results/serving.json and a Markdown table.
"""
import argparse
import concurrent.futures
import http.client
import json
import os
import tempfile
import threading
import time
import urllib.parse

from common import Timer, load_mnist, save_results  # first: sys.path, environment
import numpy as np
import tensorflow as tf

from serving import server
from trainers import export
from trainers import registry

CONFIGURATIONS = [  # (replicas, max_batch_size)
    (1, 1), (1, 16), (2, 1), (2, 16)]


def trained_autoencoder(x_train, directory: str) -> None:
    entry = registry.get_model("stacked_ae")
    config = registry.make_config("stacked_ae", {"epochs": 1})
    data = tf.data.Dataset.from_tensor_slices(x_train).shuffle(10_000, seed=0).batch(config.batch_size)
    model, _ = entry.train(config, (28, 28, 1), data)
    export.export_model(entry.family, model, (28, 28, 1), directory, entry.pixel_range)


def load(url: str, bodies, requests: int, clients: int):
    """(requests/s, latencies in ms, failures) of `requests` POSTs spread over `clients` keep-alive connections."""
    parsed = urllib.parse.urlparse(url)
    path = "/v1/models/stacked_ae:predict"
    local = threading.local()
    counter = iter(range(requests))
    lock = threading.Lock()

    def one(_):
        with lock:
            index = next(counter)
        if not hasattr(local, "connection"):
            local.connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=120)
        started = time.perf_counter()
        local.connection.request("POST", path, bodies[index % len(bodies)], {"Content-Type": "application/json"})
        response = local.connection.getresponse()
        response.read()
        return response.status == 200, (time.perf_counter() - started) * 1000

    with Timer() as timer, concurrent.futures.ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one, range(requests)))
    latencies = np.array([r[1] for r in results])
    return requests / timer.seconds, latencies, sum(not r[0] for r in results)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--images-per-request", type=int, default=1)
    parser.add_argument("--port", type=int, default=8137)
    args = parser.parse_args()
    x_train, _, x_test, _ = load_mnist()
    directory = os.path.join(tempfile.mkdtemp(prefix="serving-bench-"), "stacked_ae")
    trained_autoencoder(x_train, directory)
    k = args.images_per_request
    bodies = [json.dumps({"signature_name": "reconstruct", "instances": x_test[i:i + k].tolist()}).encode()
              for i in range(0, 256 * k, k)]
    results = {"requests": args.requests, "clients": args.clients, "images_per_request": k, "runs": []}
    for replicas, batch in CONFIGURATIONS:
        options = server.ServerOptions(max_batch_size=batch, batch_wait_timeout_s=0.005, poll_interval_s=0)
        url = server.start([server.ModelSource("stacked_ae", saved_model_dir=directory)], options,
                           server.Deployment(replicas=replicas, cpus_per_replica=1.0,
                                             max_ongoing_requests=max(64, args.clients)), port=args.port)
        load(url, bodies, 100, args.clients)  # warm-up: connections, traced functions, the router's view
        rate, latencies, failures = load(url, bodies, args.requests, args.clients)
        server.stop()
        run = {"replicas": replicas, "max_batch_size": batch, "requests_per_s": rate,
               "p50_ms": float(np.percentile(latencies, 50)), "p99_ms": float(np.percentile(latencies, 99)),
               "failures": failures}
        results["runs"].append(run)
        print(run, flush=True)
    print(f"\n{args.requests} `reconstruct` requests of {k} image(s), {args.clients} concurrent clients\n")
    print("| replicas | batching | requests/s | p50 ms | p99 ms | failed |")
    print("|---:|---|---:|---:|---:|---:|")
    for run in results["runs"]:
        batching = f"on (up to {run['max_batch_size']})" if run["max_batch_size"] > 1 else "off"
        print(f"| {run['replicas']} | {batching} | {run['requests_per_s']:.0f} | {run['p50_ms']:.1f} | "
              f"{run['p99_ms']:.1f} | {run['failures']} |")
    print("saved", save_results("serving_load", results))


if __name__ == "__main__":
    main()
