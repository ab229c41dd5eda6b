"""The Extensions Index description checks, offline, on this repository.

Mirrors ``scripts/check_description_files.py`` of github.com/Slicer/ExtensionsIndex (the checks its
CI runs on a submitted ``MedAI.json``): JSON format and schema, extension and repository names, SCM
URL, the top-level CMakeLists.txt (project name, icon and screenshot URLs that serve images), the
licence file and the repository size. Where the real check downloads (schema, image URLs) this one
reads the committed file the URL points to: a raw.githubusercontent.com URL into this repository's
``main`` branch, as named by ``scm_url`` and ``EXTENSION_HOMEPAGE``.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest

REPO = Path(__file__).resolve().parents[2]
ENTRY = REPO / "Resources" / "ExtensionsIndex" / "MedAI.json"
SCHEMA = Path(__file__).parent / "data" / "slicer-extension-catalog-entry-schema-v1.0.2.json"
# the license_file_names of check_license_file
LICENSE_NAMES = ["LICENSE", "LICENCE", "License.txt", "license.txt", "LICENSE.txt", "COPYING", "COPYING.txt"]
SIZE_LIMIT_MB = 100  # check_repository_size
MAX_SCREENSHOT_BYTES = 500_000


def cmake() -> str:
    return (REPO / "CMakeLists.txt").read_text()


def entry() -> dict:
    return json.loads(ENTRY.read_text())


def repository() -> tuple[str, str]:
    """(owner, name) from the entry's scm_url."""
    owner, name = urlsplit(entry()["scm_url"]).path.strip("/").removesuffix(".git").split("/")[-2:]
    return owner, name


def local_file(url: str) -> Path:
    """The committed file a raw.githubusercontent.com URL into this repository's main branch serves."""
    owner, name = repository()
    prefix = f"https://raw.githubusercontent.com/{owner}/{name}/{entry()['scm_revision']}/"
    assert url.startswith(prefix), f"{url}: not a raw URL into {owner}/{name} at {entry()['scm_revision']}"
    return REPO / url[len(prefix):]


def test_json_file_format_and_schema():
    import jsonschema

    assert b"\r" not in ENTRY.read_bytes(), f"{ENTRY.name}: LF line endings only"
    schema = json.loads(SCHEMA.read_text())
    assert entry()["$schema"].split("#")[0] == schema["$id"].split("#")[0], "the entry names the schema checked here"
    jsonschema.validate(entry(), schema)


def test_names_and_scm_url():
    name = ENTRY.stem
    assert not name.lower().startswith("slicer"), "the extension name should not start with 'Slicer'"
    project = re.findall(r"project\s*\(\s*([^\s\)\n\r]+)", cmake(), re.IGNORECASE)
    assert project and project[0].strip("\"'") == name, "CMake project() must match the description file name"
    url = entry()["scm_url"]
    assert urlsplit(url).scheme in ("git", "https")
    _, repo_name = repository()
    assert repo_name.startswith("Slicer"), "the git repository name should start with 'Slicer'"


def test_homepage_icon_and_screenshots_point_into_this_repository():
    owner, name = repository()
    homepage = re.findall(r'set\s*\(EXTENSION_HOMEPAGE\s*"([^"]+)"', cmake())[0]
    assert homepage.startswith(f"https://github.com/{owner}/{name}"), homepage
    icon = re.findall(r'set\s*\(EXTENSION_ICONURL\s*"([^"]+)"[ ]*\)', cmake(), re.IGNORECASE)
    shots = re.findall(r'set\s*\(EXTENSION_SCREENSHOTURLS\s*"([^"]+)"\)', cmake(), re.IGNORECASE)
    assert icon and shots, "EXTENSION_ICONURL and EXTENSION_SCREENSHOTURLS as the index's check parses them"
    urls = [icon[0].strip(), *shots[0].split()]
    from PIL import Image

    for url in urls:
        path = local_file(url)
        assert path.is_file(), f"{url}: {path.relative_to(REPO)} is not in the repository"
        tracked = subprocess.run(["git", "ls-files", "--error-unmatch", str(path.relative_to(REPO))], cwd=REPO,
                                 capture_output=True, timeout=30)
        assert tracked.returncode == 0, f"{path.relative_to(REPO)} is not committed: the URL would not serve it"
        with Image.open(path) as image:
            assert image.format == "PNG" and url.lower().endswith(".png")
    for url in urls[1:]:
        path = local_file(url)
        assert path.stat().st_size < MAX_SCREENSHOT_BYTES, f"{path.name}: keep the screenshot under 500 KB"
        with Image.open(path) as image:
            assert min(image.size) >= 300, f"{path.name}: {image.size} is too small to show a result"
        assert (REPO / "scripts" / "render_screenshot.py").read_text().count(path.name) >= 1, \
            "scripts/render_screenshot.py renders the screenshot"


def test_license_file_matches_the_project_licence():
    found = [n for n in LICENSE_NAMES if (REPO / n).is_file()]
    assert found, "no licence file in the repository root"
    text = (REPO / found[0]).read_text()
    pyproject = (REPO / "pyproject.toml").read_text()
    assert 'license = { text = "Apache-2.0" }' in pyproject
    assert "Apache License" in text and "Version 2.0, January 2004" in text


@pytest.mark.parametrize("limit_mb", [SIZE_LIMIT_MB])
def test_repository_size(limit_mb):
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, timeout=60).stdout.split(b"\0")
    total = sum((REPO / f.decode()).stat().st_size for f in files if f and (REPO / f.decode()).is_file())
    assert total / 2**20 < limit_mb, f"the repository holds {total / 2**20:.1f} MB; the index allows {limit_mb} MB"
