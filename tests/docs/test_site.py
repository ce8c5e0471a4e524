"""The built docs site works offline: every internal link and anchor resolves, no page
loads a script, a stylesheet or a font from the network, code is highlighted at build
time, the search index is there, and the API pages name every public class.

The site is built here, as ``make docs`` builds it (``mkdocs build --strict``), into a
temporary directory; it is checked by parsing its HTML (no browser)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[2]


class Page(HTMLParser):
    """The links, resources, ids and highlighted spans of one HTML page."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.resources: list[str] = []  # what the browser fetches to render the page
        self.ids: set[str] = set()
        self.token_spans = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "a" and "href" in a:
            self.links.append(a["href"])
        if tag in ("script", "img", "iframe") and a.get("src"):
            self.resources.append(a["src"])
        if tag == "link" and a.get("rel") in ("stylesheet", "preload", "icon", "preconnect"):
            self.resources.append(a.get("href", ""))
        if tag == "span" and a.get("class") in ("k", "kn", "s1", "s2", "nf", "nc", "o", "n"):
            self.token_spans += 1


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def pages(site: Path) -> dict[Path, Page]:
    parsed = {}
    for html in sorted(site.rglob("*.html")):
        page = Page()
        page.feed(html.read_text(encoding="utf-8"))
        parsed[html] = page
    return parsed


def _target(site: Path, page: Path, url: str) -> tuple[Path, str] | None:
    """The file and fragment a site-internal URL names; None for an external one."""
    parts = urlsplit(url)
    if parts.scheme or parts.netloc or url.startswith(("mailto:", "javascript:")):
        return None
    path = unquote(parts.path)
    if path.startswith("/"):  # from the site's root (the 404 page links so)
        target = (site / path.lstrip("/")).resolve()
    else:
        target = page if not path else (page.parent / path).resolve()
    if target.is_dir():
        target = target / "index.html"
    return target, parts.fragment


def test_every_internal_link_and_anchor_resolves(site: Path, pages: dict[Path, Page]) -> None:
    broken = []
    for html, page in pages.items():
        for url in page.links + page.resources:
            found = _target(site, html, url)
            if found is None:
                continue
            target, fragment = found
            if not target.exists():
                broken.append(f"{html.relative_to(site)}: {url} (no {target.name})")
            elif fragment and target.suffix == ".html" and fragment not in pages[target].ids:
                broken.append(f"{html.relative_to(site)}: {url} (no #{fragment})")
    assert not broken, "\n".join(broken[:30])


def test_nothing_is_fetched_from_the_network(site: Path, pages: dict[Path, Page]) -> None:
    remote = [
        f"{html.relative_to(site)}: {url}"
        for html, page in pages.items()
        for url in page.resources
        if urlsplit(url).scheme in ("http", "https") or url.startswith("//")
    ]
    assert not remote, "\n".join(remote[:20])
    css = "".join(p.read_text(encoding="utf-8") for p in site.rglob("*.css"))
    assert "fonts.googleapis.com" not in css and "fonts.gstatic.com" not in css


def test_code_is_highlighted_at_build_time(site: Path, pages: dict[Path, Page]) -> None:
    for name in ("index.html", "sockets/index.html", "policy/index.html", "quickstart/index.html"):
        assert pages[site / name].token_spans > 20, f"{name} has no highlighted code"


def test_the_search_index_covers_the_pages(site: Path) -> None:
    index = json.loads((site / "search" / "search_index.json").read_text(encoding="utf-8"))
    locations = {doc["location"].split("#")[0] for doc in index["docs"]}
    for page in ("", "install/", "quickstart/", "concepts/", "sockets/", "policy/",
                 "operations/", "troubleshooting/", "comparison/", "api/", "changelog/"):  # fmt: skip
        assert page in locations, page
    assert any("follow_policy" in doc["text"] for doc in index["docs"])
    # the pages made of the README's sections hold them (the README's code runs in its test)
    quickstart = next(d for d in index["docs"] if d["location"] == "quickstart/")
    assert "zmesh ca init" in quickstart["text"] or any(
        "zmesh ca init" in d["text"]
        for d in index["docs"]
        if d["location"].startswith("quickstart/")
    )


@pytest.mark.parametrize(
    "name",
    [
        "zmeshlib.Mesh",
        "zmeshlib.sockets.PubSocket",
        "zmeshlib.sockets.SubSocket",
        "zmeshlib.sockets.ReqSocket",
        "zmeshlib.sockets.RepSocket",
        "zmeshlib.sockets.PushSocket",
        "zmeshlib.sockets.PullSocket",
        "zmeshlib.Policy",
        "zmeshlib.Message",
        "zmeshlib.MeshError",
        "zmeshlib.Timeout",
        "zmeshlib.Unavailable",
        "zmeshlib.PermissionDenied",
    ],
)
def test_the_api_pages_document(site: Path, pages: dict[Path, Page], name: str) -> None:
    assert name in pages[site / "api" / "index.html"].ids
