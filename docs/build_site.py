"""Build docs/ into a static site: `python docs/build_site.py [--out site]` (what `tox -e docs` runs).

The generator is MkDocs with the Material theme (chosen: Markdown stays the source, readable on
GitHub and in an editor as before; one small YAML-free configuration below; mkdocstrings renders
the API page from the docstrings). Everything works offline:

- math: `$$ ... $$` blocks and `\\( ... \\)` inline are turned into MathML at build time
  (latex2mathml), which browsers render natively: no MathJax or KaTeX from a CDN;
- fonts: the theme's Google Fonts are switched off (the system's fonts are used);
- code references such as `mindref/routing.py: route` become links to a generated page of that
  file's source, anchored at the definition (by name, so a link cannot drift with line numbers;
  tests/test_docs.py checks every cited name exists, tests/test_site.py that every link resolves).

This file is both the build script and the MkDocs hooks module (on_files, on_page_markdown).
"""
from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
PAGES = [("Home", "index.md"), ("The specification", "spec.md"), ("Try MIND", "try.md"),
         ("Decisions", "decisions.md"),
         ("Serving", "serving.md"), ("Gradients", "gradients.md"),
         ("Conformance kit", "conformance.md"), ("Reliability", "reliability.md"),
         ("Results", "results.md"), ("Scaling", "scaling.md"), ("Design", "design.md"),
         ("Glossary", "glossary.md"), ("API", "api.md")]
CITED = re.compile(r"`((?:mindref|export|tests|bench)/[\w/]+\.py)(?:: ?(\w+))?`")
DISPLAY = re.compile(r"^\$\$(.+?)\$\$[ \t]*$", re.S | re.M)  # $$ ... $$, on one line or several
INLINE = re.compile(r"\\\((.+?)\\\)")
FENCE = re.compile(r"^```.*?^```[^\n]*$|(?:^    [^\n]*\n)+", re.S | re.M)  # fenced and indented code


def config(out: Path, src: Path) -> dict:
    return {
        "site_name": "mindref: MIND, annotated",
        "docs_dir": str(DOCS), "site_dir": str(out), "use_directory_urls": False,
        "exclude_docs": "build_site.py\ntry_page.py\n__pycache__/\ntry/\n",
        "nav": [{title: page} for title, page in PAGES],
        "theme": {"name": "material", "font": False, "features": ["navigation.sections", "toc.follow"]},
        "extra_css": ["css/source.css"],
        "markdown_extensions": ["tables", "admonition", "attr_list", {"toc": {"permalink": True}},
                                "pymdownx.superfences"],
        "plugins": ["search", {"mkdocstrings": {"handlers": {"python": {
            "paths": [str(src)], "options": {"show_source": False, "heading_level": 2,
                                              "members_order": "source", "show_root_heading": True}}}}}],
        "hooks": [str(Path(__file__).resolve())],
        "strict": False,
    }


# ---- hooks ------------------------------------------------------------------------------------

SOURCES = ("mindref", "export", "tests", "bench")  # the folders whose definitions docs may name
DEFINED = re.compile(r"\s*(?:def|class) (\w+)|^([A-Za-z_]\w*)\s*[:=]")
# a code reference by name: `Name`, `name()`, `name(args)`, `module.name`, `mindref.module.Name`
NAMED = re.compile(r"`((?:[\w.]+\.)?(\w+))(?:\([^`]*\))?`")


def symbols() -> dict[str, str]:
    """name -> the file that defines it (a top-level or method definition, or a module constant),
    for names defined in exactly one file of SOURCES: what a bare `Name` in the docs links to."""
    seen: dict[str, set] = {}
    for folder in SOURCES:
        for path in sorted((ROOT / folder).rglob("*.py")):
            for line in path.read_text(encoding="utf-8").splitlines():
                m = DEFINED.match(line)
                if m:
                    seen.setdefault(m.group(1) or m.group(2), set()).add(str(path.relative_to(ROOT)))
    return {name: next(iter(files)) for name, files in seen.items()
            if len(files) == 1 and len(name) > 2 and not name.startswith("__")}


def on_files(files, config):
    """A page of source for every file the docs cite or name a definition of, so that code
    references have a target."""
    from mkdocs.structure.files import File
    index = symbols()
    cited = set()
    for page in DOCS.glob("*.md"):
        text = page.read_text()
        cited |= {f for f, _ in CITED.findall(text)}
        cited |= {index[m.group(2)] for m in NAMED.finditer(text) if m.group(2) in index}
    for path in sorted(cited):
        if (ROOT / path).is_file():
            files.append(File.generated(config, f"source/{path}.md", content=_source_page(path)))
    return files


def _source_page(path: str) -> str:
    """The file's source, highlighted (Pygments, the theme's colours), every line numbered and
    anchored (#L12), every definition anchored by name (#route), blank lines kept."""
    from pygments import highlight
    from pygments.formatters import HtmlFormatter
    from pygments.lexers import PythonLexer
    text = (ROOT / path).read_text(encoding="utf-8")
    body = highlight(text, PythonLexer(stripnl=False, ensurenl=True), HtmlFormatter(nowrap=True))
    out = [f"# {path}", "", '<div class="highlight mindref-source"><pre><code>']
    for number, (line, colored) in enumerate(zip(text.splitlines(), body.split("\n")), 1):
        defined = DEFINED.match(line)
        name = defined and (defined.group(1) or defined.group(2))
        anchor = f'<span id="{name}"></span>' if name else ""
        out.append(f'{anchor}<span id="L{number}"></span><a class="mindref-lineno" href="#L{number}">'
                   f'{number:>4}</a>  {colored}')
    out.append("</code></pre></div>")
    return "\n".join(out) + "\n"


def on_page_markdown(markdown: str, page, config, files) -> str:
    """Math to MathML and code references to links, outside code blocks."""
    depth = page.file.src_uri.count("/")
    parts, last = [], 0
    for block in FENCE.finditer(markdown):
        parts.append(_prose(markdown[last:block.start()], depth))
        parts.append(block.group(0))
        last = block.end()
    parts.append(_prose(markdown[last:], depth))
    return "".join(parts)


SYMBOLS: dict[str, str] = {}  # filled once per build (symbols())


def _prose(text: str, depth: int) -> str:
    from latex2mathml.converter import convert
    if not SYMBOLS:  # MkDocs loads this file again as its hooks module: its own index
        SYMBOLS.update(symbols())
    text = DISPLAY.sub(lambda m: convert(m.group(1).strip(), display="block") + "\n", text)
    text = INLINE.sub(lambda m: convert(m.group(1)), text)
    up = "../" * depth

    def link(m: re.Match) -> str:
        path, name = m.group(1), m.group(2)
        if not (ROOT / path).is_file():
            return m.group(0)
        target = f"{up}source/{path}.md" + (f"#{name}" if name else "")
        return f"[{m.group(0)}]({target})"

    def named(m: re.Match) -> str:  # `Name`, `name()`, `mindref.module.Name`: to its definition
        path = SYMBOLS.get(m.group(2))
        if path is None or m.group(0).startswith("`python ") or " " in m.group(1):
            return m.group(0)
        return f"[{m.group(0)}]({up}source/{path}.md#{m.group(2)})"
    text = CITED.sub(link, text)
    already = r"\[[^\]\n]*\]\([^)\n]*\)"  # a link made above: left as it is
    return re.sub(f"{already}|{NAMED.pattern}",
                  lambda m: m.group(0) if m.group(0).startswith("[") else named(m), text)


# ---- the build --------------------------------------------------------------------------------

def build(out: Path) -> Path:
    """The site in `out` (an absolute path), the Try MIND page's runtime and model included
    (docs/try_page.py); returns it."""
    import yaml
    from mkdocs.commands.build import build as mkdocs_build
    from mkdocs.config import load_config
    with tempfile.TemporaryDirectory() as tmp:  # the config lives outside docs/, which is its docs_dir
        path = Path(tmp) / "mkdocs.yml"
        path.write_text(yaml.safe_dump(config(out.resolve(), _package_tree(Path(tmp)))))
        mkdocs_build(load_config(str(path)))
    sys.path.insert(0, str(DOCS))
    import try_page
    try_page.install(out)
    return out


def _package_tree(tmp: Path) -> Path:
    """mindref as installed (export/ is the subpackage mindref.export), as links, for the API
    page's static reading of the source."""
    package = tmp / "src" / "mindref"
    package.mkdir(parents=True)
    for entry in (ROOT / "mindref").iterdir():
        (package / entry.name).symlink_to(entry)
    (package / "export").symlink_to(ROOT / "export")
    return package.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "site")
    print(build(ap.parse_args().out.resolve()))


if __name__ == "__main__":
    main()
