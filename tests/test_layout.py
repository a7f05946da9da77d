"""The layout's import rules, read from the source (imports inside functions included): the models know nothing
of TFX, Ray or MLflow; evaluation knows no models, TFX, Ray or MLflow; the backends know no TFX and no models;
and Ray and MLflow are each reached from the one module (or Ray Train / Ray Serve module) that owns them."""
import ast
import os

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
