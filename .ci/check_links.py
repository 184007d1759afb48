"""Check the relative links of Markdown files: every target file exists, every ``#anchor`` is a heading.

Usage::

    python .ci/check_links.py README.md CHANGELOG.md docs/*.md

Links to other sites (``http:``, ``https:``, ``mailto:``) are not followed. Anchors are compared
with the heading ids that mkdocs gives (Python-Markdown's ``toc`` slugs; a repeated heading gets
``_1``, ``_2``, ...) and with explicit ``id="..."`` / ``name="..."`` attributes. Links inside code
blocks and code spans are ignored. Prints one line per broken link and exits with status 1 if
there is any.
"""

from __future__ import annotations

import re
import sys
import unicodedata
from collections.abc import Iterator, Sequence
from pathlib import Path

LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
FENCE = re.compile(r"^\s*(```|~~~)")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
HTML_ID = re.compile(r"""\b(?:id|name)\s*=\s*["']([^"']+)["']""")
EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def slugify(text: str) -> str:
    """The id Python-Markdown's ``toc`` extension (used by mkdocs) gives a heading.

    Parameters
    ----------
    text
        The heading's Markdown source (without the leading ``#``).

    Returns
    -------
    str
        Lower-case ASCII words joined by ``-``.
    """
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link shows its text
    text = re.sub(r"<[^>]+>", "", text.replace("`", ""))  # no code marks, no HTML tags
    text = re.sub(r"(\*{1,3})(.+?)\1", r"\2", text)  # emphasis
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def _lines_outside_code(path: Path) -> Iterator[tuple[int, str]]:
    """The lines of ``path`` that are not inside a fenced code block, with 1-based line numbers."""
    fence: str | None = None
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        match = FENCE.match(line)
        if match:
            if fence is None:
                fence = match.group(1)
            elif match.group(1) == fence:
                fence = None
            continue
        if fence is None:
            yield number, line


def anchors(path: Path) -> set[str]:
    """The ids a link may name in ``path``: its headings' slugs and explicit HTML ids.

    Parameters
    ----------
    path
        A Markdown file.

    Returns
    -------
    set of str
        Every anchor defined in the file.
    """
    found: set[str] = set()
    for _, line in _lines_outside_code(path):
        found.update(HTML_ID.findall(line))
        match = HEADING.match(line)
        if match:
            slug = base = slugify(match.group(2))
            count = 0
            while slug in found:
                count += 1
                slug = f"{base}_{count}"
            found.add(slug)
    return found


def check(files: Sequence[Path]) -> tuple[int, list[str]]:
    """Check every relative link of ``files``.

    Parameters
    ----------
    files
        Markdown files; their links are resolved relative to each file's folder.

    Returns
    -------
    tuple of (int, list of str)
        The number of links checked and one message per broken link.
    """
    cache: dict[Path, set[str]] = {}
    errors: list[str] = []
    checked = 0
    for source in files:
        for number, line in _lines_outside_code(source):
            for target in LINK.findall(CODE_SPAN.sub("", line)):
                if EXTERNAL.match(target):
                    continue
                checked += 1
                where = f"{source}:{number}: {target}"
                name, _, anchor = target.partition("#")
                path = (source.parent / name).resolve() if name else source.resolve()
                if not path.exists():
                    errors.append(f"{where}: no such file {path}")
                    continue
                if not anchor:
                    continue
                if path.suffix != ".md":
                    errors.append(f"{where}: an anchor into a file that is not Markdown")
                    continue
                if path not in cache:
                    cache[path] = anchors(path)
                if anchor not in cache[path]:
                    errors.append(f"{where}: no heading or id '{anchor}' in {path.name}")
    return checked, errors


def main(argv: Sequence[str] | None = None) -> int:
    """Check the files named on the command line; return the exit status (0: every link resolves)."""
    names = list(sys.argv[1:] if argv is None else argv)
    if not names:
        print(__doc__.strip().splitlines()[0])
        return 2
    files = [Path(name) for name in names]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        print("not a file: " + ", ".join(missing))
        return 2
    checked, errors = check(files)
    for message in errors:
        print(message)
    print(f"links: {checked} relative links in {len(files)} files, {len(errors)} broken")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
