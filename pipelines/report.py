"""What a finished run prints and its summary keeps, read back from ML Metadata and the artifacts
(components/artifacts.py): the components' states and main outputs, the last epoch's losses, the pictures, the
evaluation, the registered version and where the SavedModel went."""
import os
from typing import Any, Dict

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
    """Prints the last epoch's losses (from the Trainer's metrics file), its pictures, the evaluation, the
    registered version and where the SavedModel went; returns them for the run's summary."""
    by_name, results = {n.node: n for n in nodes}, {}
    model_run = by_name.get("Trainer") and by_name["Trainer"].outputs.get("model_run")
    if model_run and os.path.exists(os.path.join(model_run, artifacts.METRICS_FILE)):
        history = artifacts.TrainerMetrics.read(model_run).history
        print("latentforge: last epoch " + ", ".join(f"{k} {v[-1]:.4f}" for k, v in sorted(history.items())))
        results["last_epoch"] = {k: round(v[-1], 6) for k, v in sorted(history.items())}
        pictures = sorted(f for f in os.listdir(model_run) if f.endswith(".png"))
        if pictures:
            print(f"latentforge: pictures in {model_run}: {', '.join(pictures)}")
    evaluator = by_name.get("ModelEvaluator")
    if evaluator and os.path.exists(os.path.join(evaluator.outputs.get("evaluation", ""), artifacts.EVALUATION_FILE)):
        evaluated = artifacts.Evaluation.read(evaluator.outputs["evaluation"])
        scalars = evaluated.scalars
        print("latentforge: evaluation " + ", ".join(f"{k} {v:.4g}" for k, v in sorted(scalars.items())))
        results.update(metrics={k: round(v, 6) for k, v in sorted(scalars.items())},
                       blessed=bool(evaluated.blessing["blessed"]))
        print(f"latentforge: {'blessed' if evaluated.blessing['blessed'] else 'not blessed'}: "
              f"{evaluated.blessing['reason']}")
    registrar = by_name.get("MlflowRegistrar")
    registration = registrar and registrar.properties.get("registration", {})
    if registration:
        champion = registration.get("champion") == "1"
        print(f"latentforge: MLflow model {registration['name']} version {registration['version']}"
              f"{' (now @champion)' if champion else ''}")
        results.update(registered=f"{registration['name']}/{registration['version']}", champion=champion)
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
        print(f"latentforge: SavedModel at {pushed['pushed_destination']}")
        results["pushed"] = pushed["pushed_destination"]
    return results
