"""Search spaces (trainers/search_space.py): a file of config fields and ranges, every problem named with its line
or field before any trial starts; each family's default space fits every model of the family."""
import json

import pytest

from trainers import registry, search_space


def _space(tmp_path, text, name="space.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_a_yaml_file_becomes_domains_with_numbers_written_either_way(tmp_path):
    path = _space(tmp_path, "learning_rate: {loguniform: [1e-4, 1.0e-3]}\n"
                            "beta_1:\n  uniform: [0.3, 0.9]\nbatch_size: {choice: [32, 64]}\n"
                            "minibatch_stddev: {randint: [0, 5]}\n")
    space = search_space.resolve("dcgan", path, {})
    assert space["learning_rate"] == search_space.Domain("learning_rate", "loguniform", (1e-4, 1e-3))
    assert space["beta_1"].values == (0.3, 0.9) and space["batch_size"].values == (32, 64)
    assert space["minibatch_stddev"].ends() == [0, 4]  # randint excludes its upper bound, as Ray Tune's does
    # The same space as JSON, and through the component's JSON property unchanged.
    same = search_space.resolve("dcgan", _space(tmp_path, json.dumps(
        {"learning_rate": {"loguniform": [1e-4, 1e-3]}, "beta_1": {"uniform": [0.3, 0.9]},
         "batch_size": {"choice": [32, 64]}, "minibatch_stddev": {"randint": [0, 5]}}), "space.json"), {})
    assert same == space
    assert search_space.from_json(search_space.to_json(space)) == space


@pytest.mark.parametrize("text, message", [
    ("learning_rate: {loguniform: [1e-4, 1e-3]\n", r"space.yaml, line \d: not valid YAML or JSON"),
    ("- 1\n- 2\n", r"space.yaml: a search space is a mapping of config fields"),
    ("beta_1: {uniform: [0.3, 0.9]}\nnot_a_field: {choice: [1, 2]}\n",
     r"space.yaml, line 2: dcgan has no setting 'not_a_field'; it has: .*learning_rate"),
    ("learning_rate: {gaussian: [0, 1]}\n", r"line 1: learning_rate must be one of \{choice: ..., uniform"),
    ("learning_rate: {uniform: [1e-3, 1e-4]}\n", r"line 1: learning_rate: uniform needs low < high"),
    ("learning_rate: {loguniform: [0, 1e-3]}\n", r"line 1: learning_rate: loguniform needs low > 0"),
    ("batch_size: {randint: [16, 64.5]}\n", r"line 1: batch_size: randint takes integers"),
    ("learning_rate: {uniform: [a, 1]}\n", r"line 1: learning_rate: 'a' is not a number"),
    ("batch_size: {choice: []}\n", r"line 1: batch_size: choice needs a list"),
    # A range the family's own validation refuses at one of its edges.
    ("ema_decay: {uniform: [0.9, 1.5]}\n", r"line 1: ema_decay: uniform\(0.9, 1.5\) reaches 1.5, which dcgan refuses: "
                                          r"ema_decay=1.5: must be in \[0, 1\)"),
    ("epochs: {choice: [1, 2]}\n", r"line 1: epochs cannot be searched: the trials train --epochs"),
])
def test_a_bad_space_is_refused_naming_its_line_or_field(tmp_path, text, message):
    with pytest.raises(search_space.SearchSpaceError, match=message):
        search_space.resolve("dcgan", _space(tmp_path, text), {})


def test_a_missing_file_and_a_family_without_a_default_say_what_to_give(tmp_path):
    with pytest.raises(search_space.SearchSpaceError, match=r"no such file \(a YAML or JSON search space, or"):
        search_space.resolve("dcgan", str(tmp_path / "nope.yaml"), {})
    with pytest.raises(search_space.SearchSpaceError, match="stylegan has no default search space"):
        search_space.resolve("stylegan", "default", {})


def test_every_default_space_fits_every_model_of_its_family():
    checked = 0
    for model, entry in registry.MODELS.items():
        if entry.family.search_space:
            space = search_space.resolve(model, "default", {})
            assert space and all(field in {f for f in entry.config_class.__dataclass_fields__} for field in space)
            checked += 1
    assert checked >= 15
