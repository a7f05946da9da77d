"""What a user reads: the README stays a front door, every link in it and in docs/ leads somewhere, and nothing
written for users speaks of the project's work log (issue numbers) or of paths only its developers have."""
import functools
import glob
import os
import re

import pytest

from tests.conftest import REPO_ROOT

USER_DOCS = sorted(["README.md", "CHANGELOG.md"] + [os.path.relpath(p, REPO_ROOT)
                                                     for p in glob.glob(os.path.join(REPO_ROOT, "docs", "*.md"))])
LINK = re.compile(r"\]\(([^)\s]+)\)|src=\"([^\"]+)\"")


def _read(name):
    with open(os.path.join(REPO_ROOT, name), encoding="utf-8") as f:
        return f.read()


def test_the_readme_is_a_front_door_of_at_most_250_lines():
    text = _read("README.md")
    assert len(text.splitlines()) <= 250
    # The first screen says what it is and the two commands.
    assert "make run" in text[:2500] and "make test" in text[:2500]


@pytest.mark.parametrize("name", USER_DOCS)
def test_every_relative_link_resolves(name):
    broken = []
    for match in LINK.finditer(_read(name)):
        target = (match.group(1) or match.group(2)).split("#")[0]
        if not target or re.match(r"^[a-z]+:", target):
            continue  # an anchor in the same page, or a URL
        if not os.path.exists(os.path.join(REPO_ROOT, os.path.dirname(name), target)):
            broken.append(target)
    assert not broken, f"{name} links to missing files: {broken}"


@pytest.mark.parametrize("name", USER_DOCS)
def test_user_docs_name_no_issue_numbers_and_no_developer_paths(name):
    text = _read(name)
    assert not re.findall(r"\b[Ii]ssues? \d+", text)
    assert "../shared" not in text


@functools.lru_cache(maxsize=None)
def _report():
    """benchmarks/report.py, the generator of docs/benchmarks.md (benchmarks/ is scripts, not a package)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("report", os.path.join(REPO_ROOT, "benchmarks", "report.py"))
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    return report


@functools.lru_cache(maxsize=None)
def _results():
    return _report().load_results()


def _result(name, *keys):
    """A value from benchmarks/results/NAME.json, by keys (list indices as ints), as the page's generator reads it."""
    return _report().lookup(_results(), "/".join(map(str, (name, *keys))))


def _headline_rows():
    """The README's "How good, how fast" rows, each as its results files give it."""
    speed = lambda model: (_result("speed", model, "ours", "steady_samples_per_s")  # noqa: E731
                           / _result("speed", model, "notebook", "steady_samples_per_s"))
    # The K = 10 semi-supervised run (the published seed, then seeds 1 and 2): one arm's accuracy, its range.
    curve = lambda suffix, arm: _result("label-efficiency-10labels-ssgan" + suffix, "accuracy", arm, 0)  # noqa: E731
    seeds = lambda arm: (min(curve(s, arm) for s in ("", "-seed1", "-seed2")),  # noqa: E731
                         max(curve(s, arm) for s in ("", "-seed1", "-seed2")))
    return [
        "| DDPM, 15 minutes of training, DDIM 40 steps | FID **{:.1f}** (real test digits: {:.1f}); seed 1 at the same "
        "steps: {:.1f} |".format(
            _result("ddpm_samplers", "ddpm-15min-eta", "samplers", "ddim_uniform_40_1", "fid"),
            _result("generative", "metric_network", "test_1000_vs_train", "fid"),
            _result("generative-seeds", "ddpm-seed1", "scores", "fid")),
        "| DCGAN, 15 minutes of training | FID {:.1f}; seed 1 at the same steps: {:.1f} |".format(
            _result("generative", "dcgan-15min-b", "scores", "fid"),
            _result("generative-seeds", "dcgan-seed1", "scores", "fid")),
        "| conditional DDPM / DCGAN, 15 minutes each | the class asked for, {:.3f} / {:.3f} of the time |".format(
            _result("generative", "ddpm_cond", "scores", "conditional_accuracy"),
            _result("generative", "dcgan_cond", "scores", "conditional_accuracy")),
        "| semi-supervised GAN, 10 labels per class | test accuracy **{:.3f}** ({:.3f} trained on the labels alone); "
        "3 seeds: {:.3f}-{:.3f} ({:.3f}-{:.3f}) |".format(
            curve("", "semi_supervised_gan"), curve("", "scratch"), *seeds("semi_supervised_gan"), *seeds("scratch")),
        "| classifier on a reused `conv_ae` encoder, 10 labels per class | {:.3f} ({:.3f} from scratch); "
        "3 seeds: {:.3f}-{:.3f} ({:.3f}-{:.3f}) |".format(
            curve("", "reused"), curve("", "scratch"), *seeds("reused"), *seeds("scratch")),
        "| training speed vs the notebook's code | stacked AE {:.2f}×, DCGAN {:.2f}× the samples/s |".format(
            speed("stacked_ae"), speed("dcgan")),
        "| label-free FID vs labelled FID, rank agreement over 8 models | Spearman {:.3f} |".format(
            _result("feature_spaces", "spearman_fid")),
        "| DCGAN config searched on Ray Tune ({} trials, ASHA, {:.0f} hour), then 15 minutes "
        "| FID {:.1f} (preset {:.1f}: equal within the DCGAN's spread above); ASHA saved {} of {} epochs |".format(
            _result("tuning-dcgan", "search", "trials"), _result("tuning-dcgan", "search", "budget_minutes") / 60,
            _result("generative", "dcgan@tuned-15min-t", "scores", "fid"),
            _result("generative", "dcgan-15min-t", "scores", "fid"), _result("tuning-dcgan", "epochs_saved"),
            _result("tuning-dcgan", "search", "trials") * _result("tuning-dcgan", "epochs")),
    ]


def test_every_headline_figure_is_its_results_file_s():
    """Each row of the README's measurements table is rebuilt from benchmarks/results/*.json; the table holds
    nothing else (a figure without a file behind it fails here)."""
    text = _read("README.md")
    table = text.split("## How good, how fast", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| measurement")]
    assert rows == _headline_rows()


def test_the_benchmarks_page_is_its_template_filled_from_the_results_files():
    report = _report()
    with open(report.TEMPLATE, encoding="utf-8") as f:
        page = report.render(f.read(), _results())
    assert page == _read("docs/benchmarks.md"), "docs/benchmarks.md is stale: run python benchmarks/report.py"


# A measured figure: decimals, a thousands separator, a ratio or percentage, or three digits and more. Small
# integers in a table are settings (steps, workers, eta, a guidance scale), which a label may name.
FIGURE = re.compile(r"\d[\d,]*\.\d+|\d{1,3}(?:,\d{3})+|\d+(?:\.\d+)?\s?[x×%]|\d{3,}")


def _separator(line: str) -> bool:
    return line.startswith("|") and set(line) <= set("|-: ")


def test_every_figure_in_the_benchmarks_tables_comes_from_a_results_file():
    """Past each row's label (the first column), a number in a table cell of the template must be a placeholder:
    a figure typed in by hand fails here."""
    report = _report()
    with open(report.TEMPLATE, encoding="utf-8") as f:
        lines = f.read().splitlines()
    typed = []
    for number, line in enumerate(lines, start=1):
        following = lines[number] if number < len(lines) else ""
        if not line.startswith("|") or _separator(line) or _separator(following):
            continue  # not a table row, a separator, or a header (the line after it is the separator)
        for cell in line.split("|")[2:-1]:
            if FIGURE.search(report.PLACEHOLDER.sub("", cell)):
                typed.append(f"line {number}: {cell.strip()}")
    assert not typed, "figures typed into benchmarks/report.md's tables:\n" + "\n".join(typed)


# In prose: a measured-looking figure (a decimal, a ratio, a percentage); whole numbers there are mostly settings
# (epochs, minutes, images). A limit (≤ 10 %, within 10 %) is a criterion, not a measurement.
MEASURED = re.compile(r"(?<![\w.])(?<!≤ )(?<!≥ )(?<!within )(?:\d+\.\d+(?![\w.])|\d+(?:\.\d+)?\s?[x×%](?![\w\d]))")
NOT_PROSE = re.compile(r"`[^`]*`|\]\([^)]*\)|<[^>]*>|\w+=\"[^\"]*\"")  # code, link targets, HTML


def test_every_figure_in_the_benchmarks_prose_comes_from_a_results_file():
    """Outside tables and code blocks, a measured figure in the template is a placeholder (or marked as cited
    from elsewhere: {{"..."}}), so the page's sentences cannot drift from its tables."""
    report = _report()
    with open(report.TEMPLATE, encoding="utf-8") as f:
        lines = f.read().splitlines()
    typed, in_code = [], False
    for number, line in enumerate(lines, start=1):
        if line.startswith("```"):
            in_code = not in_code
        if in_code or line.startswith("|") or line.startswith("```"):
            continue
        text = NOT_PROSE.sub("", report.PLACEHOLDER.sub("", line))
        typed += [f"line {number}: {figure}" for figure in MEASURED.findall(text)]
    assert not typed, "figures typed into benchmarks/report.md's prose:\n" + "\n".join(typed)


def test_a_placeholder_whose_data_is_missing_stops_the_render_naming_its_line():
    report = _report()
    results = {"speed": {"dcgan": {"ours": {"steady_samples_per_s": 592.7}}}}
    assert report.render("| ours | {{speed/dcgan/ours/steady_samples_per_s:,.0f}} |\n", results).endswith(
        "| ours | 593 |\n")
    assert report.render("{{= [speed/dcgan/ours/steady_samples_per_s] / 2 :.1f}}", results).endswith("296.4")
    for missing, named in (("speed/dcgan/notebook/steady_samples_per_s", "speed.json has no dcgan/notebook"),
                           ("quality/vae/fid", "no benchmarks/results/quality.json")):
        with pytest.raises(report.MissingFigure, match=f"line 2: {named}"):
            report.render(f"# Speed\n| notebook | {{{{{missing}:.0f}}}} |\n", results)
