"""What a finished run prints and its summary keeps, read back from ML Metadata and the artifacts
(components/artifacts.py): the components' states and main outputs, the last epoch's losses, the pictures, the
evaluation, the registered version and where the SavedModel went."""
import os
import posixpath
from typing import Any, Dict

from backends import storage
from components import artifacts

_MAIN_OUTPUTS = ("transformed_examples", "model", "pushed_model", "curated_schema", "evaluation", "registration",
                 "examples", "curve")


def print_nodes(nodes, root: str) -> None:
    """One line per component: its state and main output (relative to the run's root)."""
    for node in nodes:
        key = next((k for k in _MAIN_OUTPUTS if k in node.outputs), min(node.outputs, default=None))
        shown = f"{key} -> {os.path.relpath(node.outputs[key], root)}" if key else ""
        print(f"  {node.node:24s} {node.state.lower():9s} {shown}")


def print_results(nodes) -> Dict[str, Any]:
    """Prints the last epoch's losses (from the Trainer's metrics file), the evaluation, the registered version
    with the blessing; returns them (and where the SavedModel went) for the run's summary. Pictures and commands:
    print_where_to_look."""
    by_name, results = {n.node: n for n in nodes}, {}
    verdict = None  # the blessing, printed with the registered version (or alone when nothing was registered)
    model_run = by_name.get("Trainer") and by_name["Trainer"].outputs.get("model_run")
    if model_run and os.path.exists(os.path.join(model_run, artifacts.METRICS_FILE)):
        trained = artifacts.TrainerMetrics.read(model_run)
        history = trained.history
        print("latentforge: last epoch " + ", ".join(f"{k} {v[-1]:.4f}" for k, v in sorted(history.items())))
        results["last_epoch"] = {k: round(v[-1], 6) for k, v in sorted(history.items())}
        if "kept_epoch" in trained.details:  # a generative model's best epoch by the sample-quality proxy
            details = trained.details
            epochs = len(history.get(details["kept_by"], []))
            print(f"latentforge: exported epoch {details['kept_epoch']} of {epochs}, the lowest {details['kept_by']} "
                  f"({details['kept_proxy_kid_x1e3']:.4g}; the last epoch's {details['last_proxy_kid_x1e3']:.4g})")
            results["kept_epoch"] = details["kept_epoch"]
    evaluator = by_name.get("ModelEvaluator")
    if evaluator and os.path.exists(os.path.join(evaluator.outputs.get("evaluation", ""), artifacts.EVALUATION_FILE)):
        evaluated = artifacts.Evaluation.read(evaluator.outputs["evaluation"])
        scalars = evaluated.scalars
        print("latentforge: evaluation " + ", ".join(f"{k} {v:.4g}" for k, v in sorted(scalars.items())))
        results.update(metrics={k: round(v, 6) for k, v in sorted(scalars.items())},
                       blessed=bool(evaluated.blessing["blessed"]))
        verdict = f"{'blessed' if evaluated.blessing['blessed'] else 'not blessed'}: {evaluated.blessing['reason']}"
    registrar = by_name.get("MlflowRegistrar")
    registration = registrar and registrar.properties.get("registration", {})
    if registration:
        champion = registration.get("champion") == "1"
        print(f"latentforge: MLflow model {registration['name']} version {registration['version']}"
              f"{' (now @champion)' if champion else ''}" + (f"; {verdict}" if verdict else ""))
        verdict = None
        results.update(registered=f"{registration['name']}/{registration['version']}", champion=champion)
    if verdict:
        print(f"latentforge: {verdict}")
    curve_node = by_name.get("LabelEfficiencyCurve")
    if curve_node and os.path.exists(os.path.join(curve_node.outputs.get("curve", ""), artifacts.CURVE_FILE)):
        curve = artifacts.LabelEfficiencyCurve.read(curve_node.outputs["curve"])
        print(f"latentforge: label-efficiency curve (test accuracy on {curve.test_examples} {curve.split} images)")
        print("  " + f"{'labels per class':18s}" + "".join(f"{k:>8d}" for k in curve.labels_per_class))
        for method, values in curve.accuracy.items():
            print("  " + f"{method:18s}" + "".join(f"{v:8.3f}" for v in values))
        print(f"latentforge: curve in {os.path.join(curve_node.outputs['curve'], artifacts.CURVE_PICTURE)}")
        results["label_efficiency"] = {"labels_per_class": curve.labels_per_class, **curve.accuracy}
    pushed = by_name.get("Pusher") and by_name["Pusher"].properties.get("pushed_model", {})
    if pushed and pushed.get("pushed_destination"):
        results["pushed"] = pushed["pushed_destination"]
    return results


def print_where_to_look(nodes, tracking_uri: str, paths, args) -> None:
    """The run's last lines: where its pictures are and the exact commands that show the rest (MLflow's UI,
    TensorBoard, the model server), relative to the current directory where that is shorter."""
    by_name = {n.node: n for n in nodes}
    shown = lambda path: path if storage.is_uri(path) else min(path, os.path.relpath(path), key=len)  # noqa: E731
    lines = []
    folders = []
    for node, key in (("Trainer", "model_run"), ("ModelEvaluator", "evaluation"), ("LabelEfficiencyCurve", "curve")):
        folder = by_name.get(node) and by_name[node].outputs.get(key)
        pictures = [posixpath.basename(f) for f in storage.glob(storage.join(folder, "*.png"))] if folder else []
        if pictures:
            folders.append(f"{shown(folder)}/ ({', '.join(pictures)})")
    if folders:
        lines.append(f"  pictures     {'; '.join(folders)}")
    lines.append(f"  MLflow       mlflow ui --backend-store-uri {tracking_uri}")
    model_run = by_name.get("Trainer") and by_name["Trainer"].outputs.get("model_run")
    if model_run:  # every Trainer execution is a run of its own in TensorBoard
        lines.append(f"  TensorBoard  tensorboard --logdir {shown(posixpath.dirname(model_run.rstrip('/')))}")
    registration = by_name.get("MlflowRegistrar") and by_name["MlflowRegistrar"].properties.get("registration")
    if registration:
        which = "@champion" if registration.get("champion") == "1" else f"/{registration['version']}"
        where = (f" --mlflow-uri {tracking_uri}" if getattr(args, "mlflow_uri", None) else
                 "".join(f" --{flag} {value}" for flag, value, default in (
                     ("run-dir", args.run_dir, "runs"), ("pipeline-name", args.pipeline_name, "latentforge"))
                     if value != default))
        lines.append(f"  serve        latentforge serve --model {registration['name']}{which}{where}")
    pushed = by_name.get("Pusher") and by_name["Pusher"].properties.get("pushed_model", {})
    if pushed and pushed.get("pushed_destination"):
        lines.append(f"  SavedModel   {shown(pushed['pushed_destination'])}")
    print("latentforge: where to look\n" + "\n".join(lines), flush=True)
