"""The knowledge base's version and its changelog (issue #5 part 6).

A release is named ``{kb-id}@{version}`` everywhere (CarePlan, cards, rule engine), so the
version in ``manifest.yaml`` must be a semantic version (``MAJOR.MINOR.PATCH``, optional
``-prerelease``) and ``CHANGELOG.md`` (Keep a Changelog, https://keepachangelog.com/en/1.1.0/)
must say what that release changed, in a section headed::

    ## [1.1.0] - 2026-12-01
    ### Changed
    - PR-01-NO-FLEXION also ...

``check_changelog(root)`` returns every problem as a ``KnowledgeBaseProblem`` pinned to
file:line:column: errors for a version that is not semver and for a missing changelog or a
missing or empty section for the manifest's version; warnings for the rest (unknown change
type, sections out of order, a released section newer than the manifest).
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Final

from ruamel.yaml import YAML

from cds._errors import KnowledgeBaseProblem

__all__ = [
    "CHANGELOG_FILE",
    "CHANGE_TYPES",
    "Changelog",
    "ChangelogEntry",
    "check_changelog",
    "parse_changelog",
    "semver_key",
]

CHANGELOG_FILE: Final = "CHANGELOG.md"
CHANGE_TYPES: Final = ("Added", "Changed", "Deprecated", "Removed", "Fixed", "Security")

# semver.org 2.0.0 without build metadata (a '+' is not allowed in the ruleset name the
# engine registers, and build metadata never changes what a release means)
_SEMVER: Final = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*)(?:\.(?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*))*))?$"
)
_RELEASE: Final = re.compile(r"^##\s+\[(?P<version>[^\]]+)\](?:\s+-\s+(?P<date>\S+))?\s*$")
_UNRELEASED: Final = re.compile(r"^##\s+\[?Unreleased\]?\s*$", re.IGNORECASE)
_H2: Final = re.compile(r"^##\s")
_H3: Final = re.compile(r"^###\s+(?P<kind>.+?)\s*$")
_ITEM: Final = re.compile(r"^\s*[-*+]\s+\S")


@dataclass
class ChangelogEntry:
    """One ``## [version] - date`` section; ``changes`` maps change type -> items."""

    version: str
    date: date | None
    line: int
    changes: dict[str, list[str]] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not any(self.changes.values())


@dataclass
class Changelog:
    entries: list[ChangelogEntry]
    unreleased: ChangelogEntry | None
    problems: list[KnowledgeBaseProblem]

    def entry(self, version: str) -> ChangelogEntry | None:
        return next((e for e in self.entries if e.version == version), None)


def semver_key(version: str) -> tuple[int, int, int, int, tuple[tuple[int, int | str], ...]]:
    """Sort key with semver precedence (a pre-release sorts before its release);
    ``ValueError`` if ``version`` is not a semantic version."""
    m = _SEMVER.match(version)
    if m is None:
        raise ValueError(f"not a semantic version: {version!r}")
    pre = m.group(4)
    idents: tuple[tuple[int, int | str], ...] = tuple(
        (0, int(p)) if p.isdigit() else (1, p) for p in pre.split(".")
    ) if pre else ()
    return int(m.group(1)), int(m.group(2)), int(m.group(3)), 0 if pre else 1, idents


def _is_semver(version: str) -> bool:
    return _SEMVER.match(version) is not None


def parse_changelog(text: str, file: str = CHANGELOG_FILE) -> Changelog:
    """Read a Keep a Changelog file; malformed headings become problems, not exceptions."""
    problems: list[KnowledgeBaseProblem] = []
    entries: list[ChangelogEntry] = []
    unreleased: ChangelogEntry | None = None
    current: ChangelogEntry | None = None
    kind: str | None = None

    def warn(line: int, col: int, msg: str, severity: str = "warning") -> None:
        problems.append(KnowledgeBaseProblem(file, line, col, msg, severity))

    for n, raw in enumerate(text.splitlines(), start=1):
        line = raw.rstrip()
        if _UNRELEASED.match(line):
            current = unreleased = ChangelogEntry("Unreleased", None, n)
            kind = None
            continue
        m = _RELEASE.match(line)
        if m:
            version = m.group("version").strip()
            col = line.index("[") + 2
            if not _is_semver(version):
                warn(n, col, f"section '{version}' is not a semantic version "
                     "(MAJOR.MINOR.PATCH, e.g. 1.2.0)", "error")
            day: date | None = None
            if m.group("date") is None:
                warn(n, 1, f"section [{version}] has no release date "
                     "('## [1.2.0] - YYYY-MM-DD')")
            else:
                try:
                    day = date.fromisoformat(m.group("date"))
                except ValueError:
                    warn(n, line.index(m.group("date")) + 1,
                         f"section [{version}]: '{m.group('date')}' is not a date (YYYY-MM-DD)",
                         "error")
            if any(e.version == version for e in entries):
                first = next(e for e in entries if e.version == version)
                warn(n, col, f"version {version} has two sections (first at line {first.line})",
                     "error")
            current = ChangelogEntry(version, day, n)
            entries.append(current)
            kind = None
            continue
        if _H2.match(line):
            warn(n, 1, "a section heading is '## [MAJOR.MINOR.PATCH] - YYYY-MM-DD' or "
                 "'## [Unreleased]'", "error")
            current, kind = None, None
            continue
        h3 = _H3.match(line)
        if h3 and current is not None:
            kind = h3.group("kind")
            if kind not in CHANGE_TYPES:
                warn(n, 5, f"unknown change type '{kind}'; use one of {', '.join(CHANGE_TYPES)}")
            current.changes.setdefault(kind, [])
            continue
        if _ITEM.match(line) and current is not None:
            if kind is None:
                warn(n, 1, "a change item belongs under a '### Added/Changed/...' heading")
                kind = "Changed"
            current.changes.setdefault(kind, []).append(line.strip()[2:].strip())
        elif line.strip() and current is not None and kind is not None \
                and current.changes.get(kind) and raw[:1].isspace():
            current.changes[kind][-1] += " " + line.strip()  # a wrapped item

    released = [e for e in entries if _is_semver(e.version)]
    for prev, nxt in itertools.pairwise(released):
        if semver_key(nxt.version) >= semver_key(prev.version):
            warn(nxt.line, 1, f"section [{nxt.version}] should come before [{prev.version}] "
                 "(newest first)")
    return Changelog(entries, unreleased, problems)


def _manifest_version(root: Path) -> tuple[str, int, int] | None:
    """The manifest's version with its line and column, read on its own so that this check
    also runs when the rest of the knowledge base does not load."""
    path = root / "manifest.yaml"
    try:
        with path.open(encoding="utf-8") as fh:
            doc = YAML(typ="rt").load(fh)
    except Exception:  # unreadable or not YAML: load_knowledge_base reports it
        return None
    if not isinstance(doc, dict) or "version" not in doc:
        return None
    try:
        vline, vcol = doc.lc.value("version")  # type: ignore[attr-defined]
    except Exception:
        vline = vcol = 0
    return str(doc["version"]), vline + 1, vcol + 1


def check_changelog(root: str | Path) -> list[KnowledgeBaseProblem]:
    """The versioning checks for ``kb validate``: the manifest version is semver and
    ``CHANGELOG.md`` has a non-empty section for it (errors), plus format warnings."""
    root = Path(root)
    found = _manifest_version(root)
    if found is None:
        return []
    version, vline, vcol = found
    problems: list[KnowledgeBaseProblem] = []
    if not _is_semver(version):
        problems.append(KnowledgeBaseProblem(
            "manifest.yaml", vline, vcol,
            f"version '{version}' is not a semantic version: write MAJOR.MINOR.PATCH (e.g. "
            "1.2.0, no leading zeros; optional -prerelease). Bump MAJOR when a rule change "
            "can turn advice around, MINOR for new rules or exercises, PATCH for wording"))
    path = root / CHANGELOG_FILE
    if not path.is_file():
        problems.append(KnowledgeBaseProblem(
            CHANGELOG_FILE, None, None,
            f"{CHANGELOG_FILE} is missing: each release needs a section saying what changed "
            f"('## [{version}] - YYYY-MM-DD', then '### Added' / '### Changed' / ...)"))
        return problems
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        problems.append(KnowledgeBaseProblem(CHANGELOG_FILE, None, None, f"cannot read: {err}"))
        return problems
    log = parse_changelog(text)
    problems.extend(log.problems)
    entry = log.entry(version)
    if entry is None:
        where = log.entries[0].line if log.entries else 1
        problems.append(KnowledgeBaseProblem(
            CHANGELOG_FILE, where, 1,
            f"no section for version {version} (the manifest's version): add "
            f"'## [{version}] - YYYY-MM-DD' saying what this release changes"
            + (" (or rename the [Unreleased] section)" if log.unreleased else "")))
    elif entry.empty:
        problems.append(KnowledgeBaseProblem(
            CHANGELOG_FILE, entry.line, 1,
            f"section [{version}] lists no changes (add items under '### Added', "
            "'### Changed', ...)"))
    if _is_semver(version):
        for later in log.entries:
            if _is_semver(later.version) and semver_key(later.version) > semver_key(version):
                problems.append(KnowledgeBaseProblem(
                    CHANGELOG_FILE, later.line, 1,
                    f"section [{later.version}] is newer than the manifest's version {version}: "
                    "bump the manifest version, or move the section under [Unreleased]",
                    "warning"))
    return problems
