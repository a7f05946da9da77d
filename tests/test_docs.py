"""What a user reads: the README stays a front door, every link in it and in docs/ leads somewhere, and nothing
written for users speaks of the project's work log (issue numbers) or of paths only its developers have."""
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
