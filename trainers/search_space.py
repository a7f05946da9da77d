"""A hyperparameter search space over a model's config fields, read from a small YAML or JSON file.

    learning_rate: {loguniform: [1.0e-4, 1.0e-3]}
    beta_1: {uniform: [0.3, 0.9]}
    batch_size: {choice: [32, 64, 128]}
    minibatch_stddev: {randint: [0, 5]}        # integers 0..4 (the upper bound is excluded, as in Ray Tune)

Every field must be one of the model's config fields, every range must be well formed, and every value the search
can draw at its ends (each choice, each bound) must pass the family's own config validation: a space that could
only fail is refused before any trial starts, naming the field (and the file's line). Nothing here knows Ray Tune:
the tuner turns `Domain`s into its sampling functions.
"""
import dataclasses
import json
import math
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence

from trainers import registry

KINDS = ("choice", "uniform", "loguniform", "randint")
# Fields a search does not take: the budget (epochs: ASHA's rungs are epochs of the --epochs the run trains) and
# the seed (each trial draws its own).
NOT_SEARCHED = ("epochs", "seed")


class SearchSpaceError(ValueError):
    """A space file or entry that cannot be searched; the message names the file, line and field."""


@dataclasses.dataclass(frozen=True)
class Domain:
    field: str
    kind: str  # one of KINDS
    values: tuple  # choice: the options; uniform/loguniform/randint: (low, high)
    where: str = dataclasses.field(default="", compare=False)  # "FILE, line N": for messages

    def ends(self) -> List[Any]:
        """The values at the space's edges: every choice, or both bounds (randint's largest is high - 1)."""
        if self.kind == "choice":
            return list(self.values)
        low, high = self.values
        return [low, high - 1] if self.kind == "randint" else [low, high]

    def describe(self) -> str:
        return f"{self.kind}({', '.join(map(str, self.values))})"


def _number(value, where: str) -> float:
    """YAML 1.1 reads 1e-4 as a string (1.0e-4 is a float): numbers written either way are numbers."""
    if isinstance(value, bool):
        raise SearchSpaceError(f"{where}: {value!r} is not a number")
    if isinstance(value, (int, float)):
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        raise SearchSpaceError(f"{where}: {value!r} is not a number") from None


def _domain(field: str, entry: Any, where: str) -> Domain:
    if not isinstance(entry, Mapping) or len(entry) != 1 or next(iter(entry)) not in KINDS:
        raise SearchSpaceError(f"{where}: {field} must be one of {{{': ..., '.join(KINDS)}: ...}}, e.g. "
                               f"{field}: {{choice: [a, b]}} or {field}: {{uniform: [low, high]}}; got {entry!r}")
    kind, values = next(iter(entry.items()))
    if not isinstance(values, (list, tuple)) or not values:
        needs = "options" if kind == "choice" else "[low, high]"
        raise SearchSpaceError(f"{where}: {field}: {kind} needs a list ({needs})")
    if kind == "choice":
        return Domain(field, kind, tuple(values), where)
    if len(values) != 2:
        raise SearchSpaceError(f"{where}: {field}: {kind} takes [low, high], got {list(values)}")
    low, high = (_number(v, f"{where}: {field}") for v in values)
    if kind == "randint":
        if low != int(low) or high != int(high):
            raise SearchSpaceError(f"{where}: {field}: randint takes integers, got {list(values)}")
        low, high = int(low), int(high)
    if not low < high:
        raise SearchSpaceError(f"{where}: {field}: {kind} needs low < high, got [{low}, {high}]")
    if kind == "loguniform" and low <= 0:
        raise SearchSpaceError(f"{where}: {field}: loguniform needs low > 0, got {low}")
    if not all(math.isfinite(v) for v in (low, high)):
        raise SearchSpaceError(f"{where}: {field}: bounds must be finite")
    return Domain(field, kind, (low, high), where)


def _lines_of_keys(text: str) -> Dict[str, int]:
    """Each top-level key's line in a YAML/JSON text (1-based), from YAML's own node marks."""
    import yaml  # pylint: disable=import-outside-toplevel
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    if not isinstance(node, yaml.MappingNode):
        return {}
    return {str(key.value): key.start_mark.line + 1 for key, _ in node.value}


def parse(text: str, source: str) -> Dict[str, Domain]:
    """{field: Domain} from a YAML or JSON text (JSON is YAML); `source` names it in messages."""
    import yaml  # pylint: disable=import-outside-toplevel
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f", line {mark.line + 1}" if mark is not None else ""
        raise SearchSpaceError(f"{source}{at}: not valid YAML or JSON ({getattr(e, 'problem', None) or e})") from e
    if not isinstance(raw, Mapping) or not raw:
        raise SearchSpaceError(f"{source}: a search space is a mapping of config fields to ranges, e.g. "
                               "learning_rate: {loguniform: [1.0e-4, 1.0e-3]}")
    lines = _lines_of_keys(text)
    return {str(field): _domain(str(field), entry, f"{source}, line {lines[str(field)]}" if str(field) in lines
                                else source) for field, entry in raw.items()}


def load(path: str) -> Dict[str, Domain]:
    if not os.path.isfile(path):
        raise SearchSpaceError(f"--tune {path}: no such file (a YAML or JSON search space, or 'default')")
    with open(path, encoding="utf-8") as f:
        return parse(f.read(), path)


def from_mapping(space: Mapping[str, Mapping[str, Sequence]], source: str) -> Dict[str, Domain]:
    """A space written in code (a family's default) through the same checks as a file."""
    return {field: _domain(field, entry, source) for field, entry in space.items()}


def validate(model: str, space: Mapping[str, Domain], overrides: Mapping[str, Any], source: str) -> None:
    """Every field is the model's, none is one a search does not take, and every value at the space's edges
    passes the family's config validation together with the run's other settings."""
    entry = registry.get_model(model)
    fields = {f.name for f in dataclasses.fields(entry.config_class)}
    for field, domain in space.items():
        where = domain.where or source
        if field in NOT_SEARCHED:
            raise SearchSpaceError(f"{where}: {field} cannot be searched: "
                                   + ("the trials train --epochs, which ASHA's rungs divide" if field == "epochs"
                                      else "each trial draws its own"))
        if field not in fields:
            raise SearchSpaceError(f"{where}: {model} has no setting {field!r}; it has: {', '.join(sorted(fields))}")
        for value in domain.ends():
            try:
                registry.make_config(model, {**overrides, field: value})
            except (ValueError, TypeError) as e:
                raise SearchSpaceError(f"{where}: {field}: {domain.describe()} reaches {value!r}, which "
                                       f"{model} refuses: {e}") from e


def default_space(model: str) -> Dict[str, Domain]:
    """The family's own default space (its registry description), for `--tune default`."""
    space = registry.get_model(model).family.search_space
    if not space:
        raise SearchSpaceError(f"--tune default: {model} has no default search space; give a YAML or JSON file")
    return from_mapping(space, f"{model}'s default search space")


def resolve(model: str, spec: str, overrides: Mapping[str, Any]) -> Dict[str, Domain]:
    """The checked space `--tune SPEC` names: 'default' or a file."""
    space = default_space(model) if spec == "default" else load(spec)
    validate(model, space, overrides, "the family's default space" if spec == "default" else spec)
    return space


def to_json(space: Mapping[str, Domain]) -> str:
    """The space as the component's execution property (and TFX's cache key): {field: {kind: values}}."""
    return json.dumps({f: {d.kind: list(d.values)} for f, d in sorted(space.items())}, sort_keys=True)


def from_json(text: Optional[str]) -> Dict[str, Domain]:
    return from_mapping(json.loads(text), "the search space") if text else {}
