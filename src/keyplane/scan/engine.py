"""The matcher: one pass of cheap anchor search, then one compiled alternation around the hits.

1. Prefilter: find every anchor of every rule (``sk-``, ``AKIA``, ``secret``...). The pure-Python
   prefilter runs one ``re`` search per distinct anchor; each starts with a literal, so CPython
   uses its fast literal search (GB/s). Caseless anchors are searched in the lower-cased buffer.
   When the hyperscan wheel is installed, one hyperscan pass finds all anchors at once.
2. Each hit opens a window: its line (at most ``WINDOW`` bytes either side, for minified files).
   Windows are merged, and the alternation of all rules runs only inside them.
3. Matches are validated (checksums, entropy), overlaps resolved (the most specific rule wins),
   and each gets its line, column and whether its line carries ``keyplane:allow``.

Both prefilters produce the same windows, so the results do not depend on the engine.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Final, Literal, Protocol

from keyplane.scan.rules import RULES, Rule, confidence_rank

ALLOW_MARKER: Final = b"keyplane:allow"
_GROUP_NAME: Final = re.compile(r"(\(\?P<\w+|\(\?P=\w+|\(\?\(\w+)(>|\))")
WINDOW: Final = 512
EngineName = Literal["auto", "python", "hyperscan"]


@dataclass(frozen=True, slots=True)
class Match:
    rule: Rule
    start: int
    end: int
    line: int  # 1-based
    column: int  # 1-based, in characters
    secret: bytes = field(repr=False)
    allowed: bool


@dataclass(frozen=True, slots=True)
class Anchor:
    pattern: str  # a regex starting with a literal character
    caseless: bool  # searched in the lower-cased text
    multiline: bool  # its window is not cut at line ends
    mask: int  # the rules (bit i: rule i) whose windows it opens


_LITERAL: Final = re.compile(r"(?:[A-Za-z0-9 _\-/]|\\.)+")
_LONG_LITERAL: Final = 8


def _literal(pattern: str) -> str | None:
    """The text an anchor matches when it is a plain literal, else None."""
    if not _LITERAL.fullmatch(pattern):
        return None
    return re.sub(r"\\(.)", r"\1", pattern)


class _Prefilter(Protocol):
    name: str
    groups: list[tuple[int, bool]]  # per hit group: (rule mask, multiline)

    def hits(self, data: bytes) -> list[tuple[int, int]]:
        """(position, group) of every anchor occurrence; positions need not be sorted."""
        ...


class PythonPrefilter:
    """One C-speed search per group of anchors.

    A long literal (``PRIVATE KEY``, ``hooks.slack.com/``) is found with ``bytes.find``, whose
    skip loop outruns a regex on long needles. Shorter anchors sharing their first character
    become one alternation (``x(?:ox[abeoprs]-|app-|ai-)``): ``re`` factors the character out and
    scans for it alone, so the cost is one pass per distinct first character.
    """

    name = "python"

    def __init__(self, anchors: list[Anchor]) -> None:
        self.groups: list[tuple[int, bool]] = []
        self._finds: list[tuple[bytes, bool, int]] = []
        by_first: dict[tuple[str, bool], list[Anchor]] = {}
        for a in anchors:
            literal = _literal(a.pattern)
            if literal is not None and len(literal) >= _LONG_LITERAL:
                self._finds.append((literal.encode(), a.caseless, len(self.groups)))
                self.groups.append((a.mask, a.multiline))
            else:
                first = a.pattern[:2] if a.pattern.startswith("\\") else a.pattern[0]
                by_first.setdefault((first, a.caseless), []).append(a)
        self._regexes: list[tuple[re.Pattern[bytes], bool, int]] = []
        for (_, caseless), group in by_first.items():
            rx = re.compile("|".join(a.pattern for a in group).encode())
            self._regexes.append((rx, caseless, len(self.groups)))
            mask = 0
            for a in group:
                mask |= a.mask
            self.groups.append((mask, any(a.multiline for a in group)))
        self._any_caseless = any(a.caseless for a in anchors)

    def hits(self, data: bytes) -> list[tuple[int, int]]:
        out: list[tuple[int, int]] = []
        lowered = data.lower() if self._any_caseless else data
        for rx, caseless, g in self._regexes:
            out.extend((m.start(), g) for m in rx.finditer(lowered if caseless else data))
        for literal, caseless, g in self._finds:
            buf = lowered if caseless else data
            i = buf.find(literal)
            while i != -1:
                out.append((i, g))
                i = buf.find(literal, i + 1)
        return out


class HyperscanPrefilter:
    """All anchors in one hyperscan pass."""

    name = "hyperscan"

    def __init__(self, anchors: list[Anchor]) -> None:
        import hyperscan

        self.groups = [(a.mask, a.multiline) for a in anchors]
        self._db = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
        self._db.compile(
            expressions=[a.pattern.encode() for a in anchors],
            ids=list(range(len(anchors))),
            elements=len(anchors),
            flags=[hyperscan.HS_FLAG_CASELESS if a.caseless else 0 for a in anchors],
        )

    def hits(self, data: bytes) -> list[tuple[int, int]]:
        out: list[tuple[int, int]] = []

        def on_match(anchor: int, _from: int, to: int, _flags: int, _ctx: object) -> None:
            # Without SOM only the end is known; the window around it covers the start.
            out.append((to - 1, anchor))

        if data:
            self._db.scan(data, match_event_handler=on_match)
        return out


def hyperscan_available() -> bool:
    try:
        import hyperscan  # noqa: F401
    except ImportError:
        return False
    return True


class Scanner:
    """Finds rule matches in a byte string. Built once, then used for every file and blob."""

    def __init__(self, rules: tuple[Rule, ...] = RULES, engine: EngineName = "auto") -> None:
        if not rules:
            raise ValueError("no rules to scan with")
        self.rules = rules
        masks: dict[tuple[str, bool], int] = {}
        multiline: dict[tuple[str, bool], bool] = {}
        for r, rule in enumerate(rules):
            for pattern in rule.anchors:
                key = (pattern, rule.caseless)
                masks[key] = masks.get(key, 0) | 1 << r
                multiline[key] = multiline.get(key, False) or rule.multiline
        anchors = [Anchor(p, c, multiline[p, c], mask) for (p, c), mask in masks.items()]
        self._caseless_mask = sum(1 << r for r, rule in enumerate(rules) if rule.caseless)
        if engine == "hyperscan" or (engine == "auto" and hyperscan_available()):
            self._prefilter: _Prefilter = HyperscanPrefilter(anchors)
        else:
            self._prefilter = PythonPrefilter(anchors)
        self._groups = self._prefilter.groups
        self._branches: list[str] = []
        self._secret_groups: list[str | None] = []
        for i, rule in enumerate(rules):
            # Group names are per rule in the alternation: suffix them with the rule's index.
            pattern = _GROUP_NAME.sub(rf"\g<1>_{i}\g<2>", rule.pattern)
            has_secret = re.compile(rule.pattern).groupindex.get("secret") is not None
            self._secret_groups.append("secret_%d" % i if has_secret else None)
            self._branches.append("(?P<r%d>%s)" % (i, pattern))
        # The alternation of every rule, restricted in each window to the rules whose anchors
        # opened it (the same branches, in the same order); each restriction compiled on first use.
        self._alternations: dict[int, re.Pattern[bytes]] = {}

    @property
    def engine(self) -> str:
        return self._prefilter.name

    def _alternation(self, mask: int) -> re.Pattern[bytes]:
        rx = self._alternations.get(mask)
        if rx is None:
            chosen = [b for i, b in enumerate(self._branches) if mask >> i & 1]
            rx = self._alternations[mask] = re.compile("|".join(chosen).encode())
        return rx

    def _windows(self, data: bytes) -> list[tuple[int, int, int]]:
        """(start, end, rule mask) of the merged windows around the anchor hits."""
        n = len(data)
        spans = []
        groups = self._groups
        for pos, group in self._prefilter.hits(data):
            mask, multiline = groups[group]
            lo, hi = max(0, pos - WINDOW), min(n, pos + WINDOW)
            if not multiline:
                nl = data.rfind(b"\n", lo, pos)
                if nl != -1:
                    lo = nl + 1
                nl = data.find(b"\n", pos, hi)
                if nl != -1:
                    hi = nl
            spans.append((lo, hi, mask))
        if not spans:
            return spans
        spans.sort()
        merged = [spans[0]]
        for lo, hi, mask in spans[1:]:
            last_lo, last_hi, last_mask = merged[-1]
            if lo <= last_hi:
                merged[-1] = (last_lo, max(hi, last_hi), last_mask | mask)
            else:
                merged.append((lo, hi, mask))
        return merged

    def _candidates(self, data: bytes) -> list[tuple[int, int, int]]:
        """(secret start, secret end, rule index) of every validated match."""
        found: list[tuple[int, int, int]] = []
        caseless = self._caseless_mask
        for lo, hi, mask in self._windows(data):
            if mask & ~caseless:
                matches = self._alternation(mask & ~caseless).finditer(data, lo, hi)
                self._collect(data, matches, 0, found)
            if mask & caseless:
                # Caseless rules run on the lower-cased window; offsets are the same.
                matches = self._alternation(mask & caseless).finditer(data[lo:hi].lower())
                self._collect(data, matches, lo, found)
        return found

    def _collect(
        self, data: bytes, matches: Iterator[re.Match[bytes]], offset: int, found: list[tuple[int, int, int]]
    ) -> None:
        for m in matches:
            index = int(m.lastgroup[1:])  # type: ignore[index]
            group = self._secret_groups[index]
            start, end = m.span(group) if group else m.span()
            if start < 0:
                continue
            start, end = start + offset, end + offset
            rule = self.rules[index]
            if rule.validate is not None and not rule.validate(data[start:end]):
                continue
            found.append((start, end, index))

    def _resolve(self, candidates: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
        """Where spans overlap, keep the most confident rule (then the earlier, more specific one)."""
        candidates.sort()
        kept: list[tuple[int, int, int]] = []
        for cand in candidates:
            if kept and cand[0] < kept[-1][1]:
                if self._better(cand, kept[-1]):
                    kept[-1] = cand
                continue
            kept.append(cand)
        return kept

    def _better(self, a: tuple[int, int, int], b: tuple[int, int, int]) -> bool:
        ra, rb = self.rules[a[2]], self.rules[b[2]]
        ka = (confidence_rank(ra.confidence), -a[2], a[1] - a[0])
        kb = (confidence_rank(rb.confidence), -b[2], b[1] - b[0])
        return ka > kb

    def scan(self, data: bytes) -> list[Match]:
        """Every resolved match with its line, column and ``keyplane:allow`` flag.

        Linear in ``data``: matches come sorted by start, so each line's bounds and marker are
        found once per line (not once per match), and the column advances from the previous match
        on the same line instead of being counted again from the line's start.
        """
        matches = []
        line, line_start, line_end = 1, 0, -1  # line_end: the current line's "\n" (or len(data))
        allowed = False
        column_at, column = 0, 1  # column (1-based, in characters) of the byte at column_at
        for start, end, index in self._resolve(self._candidates(data)):
            if start > line_end:  # the first match on a new line
                scanned_to = max(line_end, 0)
                line += data.count(b"\n", scanned_to, start)
                line_start = data.rfind(b"\n", scanned_to, start) + 1
                line_end = data.find(b"\n", start)
                if line_end == -1:
                    line_end = len(data)
                allowed = data.find(ALLOW_MARKER, line_start, line_end) != -1
                column_at, column = line_start, 1
            # Matches start on ASCII bytes, so no slice here cuts a UTF-8 sequence.
            column += len(data[column_at:start].decode("utf-8", "replace"))
            column_at = start
            matches.append(
                Match(
                    rule=self.rules[index],
                    start=start,
                    end=end,
                    line=line,
                    column=column,
                    secret=data[start:end],
                    allowed=allowed,
                )
            )
        return matches
