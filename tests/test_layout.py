"""The layout's import rules, read from the source (imports inside functions included): the models know nothing
of TFX, Ray or MLflow; evaluation knows no models, TFX, Ray or MLflow; the backends know no TFX and no models;
and Ray and MLflow are each reached from the one module (or Ray Train / Ray Serve module) that owns them."""
import ast
import os
import sys

import pytest

from tests.conftest import REPO_ROOT

PACKAGES = ("pipelines", "components", "trainers", "evaluation", "serving", "backends")


def _imports(path):
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def _modules(package):
    for folder, _, names in os.walk(os.path.join(REPO_ROOT, package)):
        for name in sorted(names):
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                yield os.path.relpath(path, REPO_ROOT), set(_imports(path))


def _top(names):
    return {name.split(".")[0] for name in names}


@pytest.mark.parametrize("package, forbidden", [
    ("trainers", {"tfx", "ray", "mlflow", "components", "pipelines", "serving", "backends"}),
    ("evaluation", {"tfx", "ray", "mlflow", "trainers", "components", "pipelines", "serving", "backends"}),
    ("backends", {"tfx", "trainers", "components", "pipelines", "serving", "evaluation"}),
    ("serving", {"tfx", "components", "pipelines", "mlflow"}),
    ("components", {"pipelines"}),
])
def test_packages_import_only_downward(package, forbidden):
    offending = {path: sorted(_top(names) & forbidden) for path, names in _modules(package)
                 if _top(names) & forbidden}
    assert not offending


def test_packages_form_no_cycle():
    """Which package imports which, as a graph: it has no cycle (the CLI's commands live in pipelines/, which
    imports the rest and is imported by none; the exporter lives in trainers/ beside the signatures it writes)."""
    graph = {package: set() for package in PACKAGES}
    for package in PACKAGES:
        for _, names in _modules(package):
            graph[package] |= (_top(names) & set(PACKAGES)) - {package}
    order, visiting = [], set()

    def visit(package, path):
        assert package not in visiting, f"an import cycle: {' -> '.join(path + [package])}"
        if package in order:
            return
        visiting.add(package)
        for imported in sorted(graph[package]):
            visit(imported, path + [package])
        visiting.discard(package)
        order.append(package)

    for package in PACKAGES:
        visit(package, [])
    assert not [package for package in graph if "pipelines" in graph[package]]  # the top: nothing imports it


def test_ray_and_mlflow_are_each_touched_in_their_own_modules():
    users = {"ray": set(), "mlflow": set()}
    for package in PACKAGES:
        for path, names in _modules(package):
            for library in users:
                if library in _top(names):
                    users[library].add(path)
    assert users["mlflow"] == {"backends/tracking.py"}
    # Connecting: backends/ray_cluster.py (a local head: backends/local_ray.py, `ray start` in its own process);
    # Ray Train, Ray Tune, Ray Jobs and Ray Serve each in one module.
    assert users["ray"] == {"backends/ray_cluster.py", "backends/local_ray.py", "components/trainer/ray_train.py",
                            "components/tuner/ray_tune.py", "pipelines/ray_jobs.py", "serving/server.py"}
    for path in users["ray"] - {"backends/ray_cluster.py", "backends/local_ray.py"}:
        names = dict(_modules(os.path.dirname(path)))[path]
        assert "ray.init" not in names and not any(n.endswith(".connect") for n in names if n.startswith("ray")), path


def test_executors_import_no_other_components_executor():
    """What one component hands the next goes through components/artifacts.py, not the other's executor."""
    for path, names in _modules("components"):
        own = path.split("/")[1]
        others = {n for n in names if n.startswith("components.") and n.split(".")[1] != own
                  and n.split(".")[1] != "artifacts" and len(n.split(".")) > 2 and n.split(".")[2] == "executor"}
        assert not others, (path, others)


def _string_constants(path):
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.lineno, node.value, False
        elif isinstance(node, ast.Compare):  # `model == "dcgan"`, `name in ("ddpm", ...)`: a branch on a name
            for operand in [node.left, *node.comparators]:
                for item in (operand.elts if isinstance(operand, (ast.Tuple, ast.List, ast.Set)) else [operand]):
                    if isinstance(item, ast.Constant) and isinstance(item.value, str):
                        yield item.lineno, item.value, True


# Where a family's name may appear outside its own module, and why: the server's record of what exports from
# before the SavedModel metadata were (serving/model.py); "classifier" is also the metric network's training
# method (--fid-features classifier), a word those modules use in that sense.
NAMED_ELSEWHERE = {
    "serving/model.py": {"diffusion", "gan", "vae", "autoencoder", "classifier"},
    "evaluation/metric_network.py": {"classifier"}, "components/evaluation/executor.py": {"classifier"},
    "components/artifacts.py": {"classifier"}, "pipelines/cli.py": {"classifier"},
    "pipelines/run_request.py": {"classifier"},
}


def test_families_are_named_only_in_their_own_modules():
    """A family is one module: its name appears in no other module of the packages, and no code outside the
    models branches on a model's name; what the rest needs to know it reads from the family's description (its
    roles included: needs a base model, semi-supervised, conditional, detects anomalies)."""
    from trainers import registry  # pylint: disable=import-outside-toplevel
    home = {name: os.path.relpath(sys.modules[family.config_class.__module__].__file__, REPO_ROOT)
            for name, family in registry.FAMILIES.items() if family.config_class.__module__.startswith("trainers.")}
    offending = []
    for package in PACKAGES:
        for path, _ in _modules(package):
            for line, value, compared in _string_constants(os.path.join(REPO_ROOT, path)):
                if value in NAMED_ELSEWHERE.get(path, ()):
                    continue
                family_name = value in home and path != home[value]
                # (trainers/ compares config values that share a model's word: architecture == "dcgan")
                model_name = compared and package != "trainers" and value in registry.MODELS
                if family_name or model_name:
                    offending.append(f"{path}:{line} {value!r}")
    assert not offending, offending
