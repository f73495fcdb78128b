"""The docs as a site, opened in a real browser: docs/build_site.py builds it; headless Chromium
(Debian's package, driven by Playwright) loads every page with no console error; every equation
is MathML (no raw $$ left); every internal link, anchor and picture resolves (and every picture is
drawn); a screenshot of the routing section is kept (MINDREF_ARTIFACTS, else the test's temporary folder).

Needs the `docs` extra and a Chromium (`apt-get install chromium`; .ci/run installs both); without
them the tests skip, except under CI=true, where they fail."""
import functools
import html.parser
import http.server
import importlib.util
import os
import re
import shutil
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
MISSING = [m for m in ("mkdocs", "material", "mkdocstrings", "latex2mathml", "playwright")
           if importlib.util.find_spec(m) is None] + ([] if CHROMIUM else ["chromium"])
if MISSING and os.environ.get("CI") != "true":
    pytest.skip(f"the site tests need {', '.join(MISSING)} (pip install -e '.[docs]', apt-get install "
                "chromium)", allow_module_level=True)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    assert not MISSING, f"CI must install {', '.join(MISSING)}"
    spec = importlib.util.spec_from_file_location("build_site", ROOT / "docs" / "build_site.py")
    build_site = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build_site)
    return build_site.build(tmp_path_factory.mktemp("site") / "site")


@pytest.fixture(scope="module")
def server(site):
    handler = functools.partial(_Quiet, directory=str(site))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)  # loopback only
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


def pages(site: Path) -> list[str]:
    return sorted(str(p.relative_to(site)) for p in site.rglob("*.html") if p.name != "404.html")


def test_every_page_loads_without_a_console_error(site, server, browser):
    tab = browser.new_page()
    errors = []
    tab.on("console", lambda m: errors.append(f"{tab.url}: {m.text}") if m.type == "error" else None)
    tab.on("pageerror", lambda e: errors.append(f"{tab.url}: {e}"))
    unloaded = []
    for name in pages(site):
        response = tab.goto(f"{server}/{name}")
        assert response.ok, name
        tab.wait_for_load_state("networkidle")
        unloaded += [f"{name}: {src}" for src in tab.evaluate(
            "Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src)")]
    assert errors == [] and unloaded == []
    assert "spec.html" in pages(site) and "api.html" in pages(site)


def test_every_equation_is_rendered(site):
    source = (ROOT / "docs" / "spec.md").read_text()
    expected = len(re.findall(r"^\$\$", source, re.M))
    built = (site / "spec.html").read_text()
    assert expected >= 8 and len(re.findall(r'<math [^>]*display="block"', built)) == expected
    for name in pages(site):
        text = re.sub(r"<(pre|code)\b.*?</\1>", "", (site / name).read_text(), flags=re.S)
        assert "$$" not in text and "\\(" not in text, name


def test_every_internal_link_and_anchor_resolves(site):
    anchors = {name: _ids(site / name) for name in pages(site)}
    broken = []
    for name in pages(site):
        for href in _links(site / name):
            if re.match(r"[a-z]+:|//|#$", href):
                continue  # external, or the page itself
            path, _, fragment = href.partition("#")
            target = os.path.normpath(os.path.join(os.path.dirname(name), path)) if path else name
            if (site / target).is_dir():
                target = os.path.join(target, "index.html")
            if not (site / target).is_file():
                broken.append(f"{name}: {href} (no {target})")
            elif fragment and target.endswith(".html") and fragment not in anchors.get(target, ()):
                broken.append(f"{name}: {href} (no #{fragment})")
    assert broken == []


def test_code_references_link_to_their_definition(site):
    spec = (site / "spec.html").read_text()
    assert 'href="source/export/retrieval.py.html#eq3"' in spec  # `export/retrieval.py: eq3`
    source = (site / "source" / "export" / "retrieval.py.html").read_text()
    # the definition's anchor, its line's anchor and number, then the highlighted `def eq3`
    assert re.search(r'id="eq3"></span><span id="L(\d+)"></span><a class="mindref-lineno" '
                     r'href="#L\1">\s*\1</a>\s+<span class="k">def</span>(<span class="w"> </span>| )'
                     r'<span class="nf">eq3</span>', source)


def test_source_pages_keep_every_line_highlighted_and_numbered(site):
    path = ROOT / "mindref" / "routing.py"
    lines = path.read_text().splitlines()
    page = (site / "source" / "mindref" / "routing.py.html").read_text()
    numbered = re.findall(r'<span id="L(\d+)"></span><a class="mindref-lineno"', page)
    assert [int(n) for n in numbered] == list(range(1, len(lines) + 1))  # blank lines included
    defs = sum(line.lstrip().startswith("def ") for line in lines)
    assert page.count('class="k">def</span>') == defs


def test_every_code_reference_is_a_link_to_its_definition(site):
    """Every backticked path (`mindref/x.py`, `mindref/x.py: name`) and every backticked name that
    one file of mindref/, export/, tests/ or bench/ defines, on every page, is a link into the
    source pages (counted independently of the build's own index)."""
    defined = {}
    for folder in ("mindref", "export", "tests", "bench"):
        for path in (ROOT / folder).rglob("*.py"):
            for m in re.finditer(r"^\s*(?:def|class) (\w+)|^([A-Za-z_]\w*)\s*[:=]", path.read_text(), re.M):
                defined.setdefault(m.group(1) or m.group(2), set()).add(path)
    unique = {n for n, files in defined.items() if len(files) == 1 and len(n) > 2 and not n.startswith("__")}
    total = 0
    for md in sorted((ROOT / "docs").glob("*.md")):
        text = re.sub(r"^```.*?^```[^\n]*$|(?:^    [^\n]*\n)+", "", md.read_text(), flags=re.S | re.M)
        refs = [m.group(1) for m in re.finditer(r"`([^`\n]+)`", text)
                if re.fullmatch(r"(?:mindref|export|tests|bench)/[\w/]+\.py(?:: ?\w+)?", m.group(1))
                or (re.fullmatch(r"(?:[\w.]+\.)?(\w+)(?:\([^`]*\))?", m.group(1))
                    and re.fullmatch(r"(?:[\w.]+\.)?(\w+)(?:\([^`]*\))?", m.group(1)).group(1) in unique)]
        refs = [r for r in refs if not r.startswith("python ") and (ROOT / r.split(":")[0]).exists()
                or ".py" not in r]
        built = (site / md.name.replace(".md", ".html")).read_text()
        linked = re.findall(r'<a href="[^"]*source/[^"]*"><code>([^<]*)</code></a>', built)
        missing = [r for r in refs if html.unescape(r) not in map(html.unescape, linked)]
        assert not missing, f"{md.name}: not links: {missing[:10]}"
        total += len(refs)
    assert total >= 300


def test_figure_2_is_drawn_on_the_spec_page(server, browser):
    tab = browser.new_page(viewport={"width": 1300, "height": 1000})
    tab.goto(f"{server}/spec.html")
    figure = tab.locator('img[src$="figure2.svg"]')
    assert figure.count() == 1
    width = tab.evaluate("document.querySelector('img[src$=\"figure2.svg\"]').naturalWidth")
    assert width >= 700  # the SVG's own width: loaded and parsed as an image


def test_a_screenshot_of_the_routing_section(server, browser, tmp_path):
    folder = Path(os.environ.get("MINDREF_ARTIFACTS", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    tab = browser.new_page(viewport={"width": 1300, "height": 1000})
    tab.goto(f"{server}/spec.html")
    heading = tab.locator("h2", has_text="B2I dynamic routing")
    heading.scroll_into_view_if_needed()
    equation = tab.locator("math").nth(3)
    box = equation.bounding_box()
    assert box is not None and box["height"] > 10 and box["width"] > 100  # drawn, not raw text
    shot = folder / "routing.png"
    tab.screenshot(path=str(shot))
    assert shot.stat().st_size > 20_000


class _Parser(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids, self.hrefs = set(), []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if attrs.get("id"):
            self.ids.add(attrs["id"])
        if tag == "a" and attrs.get("href"):
            self.hrefs.append(attrs["href"])
        if tag == "img" and attrs.get("src"):
            self.hrefs.append(attrs["src"])  # a picture must resolve as a link does


def _parse(path: Path) -> _Parser:
    parser = _Parser()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def _ids(path: Path) -> set:
    return _parse(path).ids


def _links(path: Path) -> list:
    return _parse(path).hrefs
