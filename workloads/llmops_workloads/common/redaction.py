"""PII redaction shared by every llmops server: logs, audit records and, when enabled, the text a
generator is sent. Only the standard library, so the operator and every workload can import it.

Each type is found in two steps: a compiled regular expression proposes candidates cheaply, then
a checksum or range rule (Luhn, ISO 7064 mod 97, Verhoeff, the Dutch 11-check, the SSN and NINO
allocation rules, IP octet ranges) decides, so that order numbers and other digit runs are left
alone. Where a format has no check and looks like any other number (a bare 9-digit SSN, a bare
10-digit phone number), a keyword just before it is required. Every pattern is linear in its
input (possessive runs, bounded repeats) and the text scanned is capped at ``max_length``.

Formats, validation and measured precision/recall: docs/redaction.md.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

# Detection order is priority order: when spans overlap, the earlier (more specific) type wins.
TYPES: tuple[str, ...] = ("email", "iban", "card", "ssn", "nino", "dni", "aadhaar", "bsn", "ip", "phone")
DEFAULT_PLACEHOLDER = "[{TYPE}]"
DEFAULT_MAX_LENGTH = 1 << 20


@dataclass(frozen=True, slots=True)
class Span:
    """One detected item: ``type`` is one of ``TYPES`` and ``text`` is ``source[start:end]``."""

    type: str
    start: int
    end: int
    text: str


Placeholder = str | Callable[[Span], str]
_Detector = Callable[[str], Iterator[tuple[int, int]]]


def _before(text: str, start: int, pattern: re.Pattern[str], width: int) -> bool:
    """Whether ``pattern`` occurs in the ``width`` characters before ``start`` (``$`` anchors at start)."""
    return pattern.search(text, max(0, start - width), start) is not None


# "AT65 0941 8985 4557 1175": digit groups that continue a letters-and-digits token (an IBAN with
# bad check digits, a part number) are not a phone or card number of their own.
_CODE_HEAD = re.compile(r"(?<![\w.])[A-Za-z]{1,4}[0-9]{1,4}[ \-]$")


def _continues_code(text: str, start: int) -> bool:
    return _CODE_HEAD.search(text, max(0, start - 10), start) is not None


def _glued(text: str, end: int) -> bool:
    """A letter, digit or underscore right after a candidate: it is part of a longer token."""
    return end < len(text) and (text[end].isalnum() or text[end] == "_")


# -- e-mail ----------------------------------------------------------------------------------
# Local part: dot-separated atoms of word characters and % + - (RFC 5322's rarer characters are
# left out: a quote or slash in prose is punctuation far more often). Domain: labels of at most
# 63 characters and a letters-only (or punycode) top-level domain. Unicode letters are allowed.
_EMAIL = re.compile(
    r"(?<![\w.%+\-])[\w%+\-]++(?:\.[\w%+\-]++)*+@"
    r"(?:[^\W_](?:[\w\-]{0,61}[^\W_])?\.)+(?:[^\W\d_]{2,63}|xn--[a-z0-9\-]{1,59})(?![\w\-])"
)


def _emails(text: str) -> Iterator[tuple[int, int]]:
    if "@" not in text:
        return
    for m in _EMAIL.finditer(text):
        yield m.span()


# -- IBAN ------------------------------------------------------------------------------------
# ISO 13616 lengths per country (SWIFT IBAN registry). The candidate pattern reads up to 30 BBAN
# characters with optional single separators; the country's length then says where the IBAN ends,
# and that must be at a token boundary.
_IBAN_LENGTHS: dict[str, int] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BI": 27,
    "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27, "DK": 18, "DO": 28,
    "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23,
    "GL": 18, "GR": 27, "GT": 28, "HN": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26,
    "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21,
    "LY": 25, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MN": 20, "MR": 27, "MT": 31, "MU": 30, "NI": 28,
    "NL": 18, "NO": 15, "OM": 23, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22,
    "RU": 33, "SA": 24, "SC": 31, "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25,
    "SV": 28, "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}  # fmt: skip
_IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Za-z]{2}[0-9]{2}(?:[ \-]?[A-Za-z0-9]){10,30}+")


def iban_ok(iban: str) -> bool:
    """ISO 13616: known country, that country's length, check digits 02-98, and mod 97 == 1."""
    iban = iban.upper()
    if _IBAN_LENGTHS.get(iban[:2]) != len(iban) or not iban.isascii() or not iban.isalnum():
        return False
    if not iban[2:4].isdigit() or not 2 <= int(iban[2:4]) <= 98:
        return False
    rearranged = iban[4:] + iban[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def _ibans(text: str) -> Iterator[tuple[int, int]]:
    for m in _IBAN.finditer(text):
        length = _IBAN_LENGTHS.get(text[m.start() : m.start() + 2].upper())
        if length is None:
            continue
        chars: list[str] = []
        end = m.start()
        for i in range(m.start(), m.end()):
            if text[i].isalnum():
                chars.append(text[i])
                if len(chars) == length:
                    end = i + 1
                    break
        if len(chars) == length and not _glued(text, end) and iban_ok("".join(chars)):
            yield m.start(), end


# -- payment cards ---------------------------------------------------------------------------
# A run of digit groups separated by single spaces or dashes; a card is a leading window of whole
# groups in a printed layout (one group, 4-4-4-4[-1..4], 4-6-5, 4-6-4), 13-19 digits, a known
# issuer prefix and a valid Luhn digit. Only the run's start (and the group after a card) is
# tried, so a long string of grouped digits yields one chance, not one per group.
_CARD_RUN = re.compile(r"(?<!\w)(?<![0-9]\.)[0-9]++(?:[ \-][0-9]++)*+")
_DIGITS = re.compile(r"[0-9]+")


def luhn_ok(digits: str) -> bool:
    """The Luhn (mod 10) check of payment card numbers."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card_layout(lens: Sequence[int]) -> bool:
    if not 13 <= sum(lens) <= 19:
        return False
    if len(lens) == 1 or tuple(lens) in ((4, 6, 5), (4, 6, 4)):
        return True
    return len(lens) in (4, 5) and all(n == 4 for n in lens[:-1]) and 1 <= lens[-1] <= 4


_16_TO_19 = frozenset(range(16, 20))
# (first prefix, last prefix, lengths): the major networks' issuer ranges. Others (airlines' 1,
# fuel and private-label 7-9, a 14-digit number starting 35) are not cards here.
_ISSUERS: tuple[tuple[str, str, frozenset[int]], ...] = (
    ("4", "4", frozenset({13, 16, 19})),  # Visa
    ("51", "55", frozenset({16})),  # Mastercard
    ("2221", "2720", frozenset({16})),  # Mastercard 2-series
    ("2200", "2204", _16_TO_19),  # Mir
    ("34", "34", frozenset({15})),  # American Express
    ("37", "37", frozenset({15})),
    ("300", "305", frozenset(range(14, 20))),  # Diners Club
    ("36", "36", frozenset(range(14, 20))),
    ("38", "39", frozenset(range(14, 20))),
    ("3528", "3589", _16_TO_19),  # JCB
    ("6011", "6011", _16_TO_19),  # Discover
    ("644", "649", _16_TO_19),
    ("65", "65", _16_TO_19),
    ("62", "62", _16_TO_19),  # UnionPay
    ("60", "60", frozenset({16})),  # RuPay
    ("5018", "5018", frozenset(range(13, 20))),  # Maestro
    ("5020", "5020", frozenset(range(13, 20))),
    ("5038", "5038", frozenset(range(13, 20))),
    ("5893", "5893", frozenset(range(13, 20))),
    ("6304", "6304", frozenset(range(13, 20))),
    ("6759", "6759", frozenset(range(13, 20))),
    ("6761", "6763", frozenset(range(13, 20))),
)


def _card_prefix(digits: str) -> bool:
    """A known issuer range, with one of that network's lengths."""
    n = len(digits)
    return any(lo <= digits[: len(lo)] <= hi and n in lengths for lo, hi, lengths in _ISSUERS)


def _cards(text: str) -> Iterator[tuple[int, int]]:
    for run in _CARD_RUN.finditer(text):
        if run.end() - run.start() < 13 or _continues_code(text, run.start()):
            continue
        groups = _DIGITS.finditer(text, run.start(), run.end())
        buf: list[re.Match[str]] = []
        while True:
            buf.extend(g for _, g in zip(range(6 - len(buf)), groups, strict=False))
            found = 0
            for k in range(min(5, len(buf)), 0, -1):
                window = buf[:k]
                digits = "".join(g.group() for g in window)
                at_run_end = k == len(buf)
                if at_run_end and _glued(text, window[-1].end()):
                    continue
                if _card_layout([len(g.group()) for g in window]) and _card_prefix(digits) and luhn_ok(digits):
                    found = k
                    break
            if not found:
                break
            yield buf[0].start(), buf[found - 1].end()
            del buf[:found]


# -- US Social Security number ---------------------------------------------------------------
# AAA-GG-SSSS: area not 000, 666 or 900-999 (ITINs), group not 00, serial not 0000; dashes or
# spaces. Nine bare digits only after an SSN keyword. Two numbers published in advertising are
# known to be invalid.
_SSN = re.compile(
    r"(?<![\w\-.])(?<![0-9][ \-])(?!000|666|9)([0-9]{3})([ \-]?)(?!00)([0-9]{2})\2(?!0000)([0-9]{4})"
    r"(?![\w\-])(?![ .\-][0-9])"
)
_SSN_WORDS = re.compile(r"(?i)\b(?:ssn|ss#|ss\s?no\b|social\s+security)")
_SSN_INVALID = frozenset({"078051120", "219099999"})


def _ssns(text: str) -> Iterator[tuple[int, int]]:
    for m in _SSN.finditer(text):
        if m.group(1) + m.group(3) + m.group(4) in _SSN_INVALID:
            continue
        if m.group(2) or _before(text, m.start(), _SSN_WORDS, 40):
            yield m.span()


# -- UK National Insurance number ------------------------------------------------------------
# Two prefix letters (first not D F I Q U V, second not D F I O Q U V; BG GB KN NK NT TN ZZ are
# never allocated), six digits, suffix A-D; spaces optional; upper case (lower case lets words
# through: "At 101376 B"). No check digit exists.
_NINO = re.compile(
    r"(?<!\w)(?!BG|GB|KN|NK|NT|TN|ZZ)[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?[0-9]{2} ?[0-9]{2} ?[0-9]{2} ?[A-D](?!\w)"
)


def _ninos(text: str) -> Iterator[tuple[int, int]]:
    for m in _NINO.finditer(text):
        yield m.span()


# -- Spanish DNI / NIE -----------------------------------------------------------------------
# DNI: 8 digits and a control letter, the number mod 23 indexing TRWAGMYFPDXBNJZSQVHLCKE.
# NIE: X, Y or Z (read as 0, 1, 2) then 7 digits and the same letter.
_DNI = re.compile(
    r"(?<![\w.\-])(?:([0-9]{8})|([0-9]{2})\.([0-9]{3})\.([0-9]{3})|([XYZxyz])[ \-]?([0-9]{7}))"
    r"([ \-]?)([A-Za-z])(?!\w)"
)
_DNI_LETTERS = "TRWAGMYFPDXBNJZSQVHLCKE"


def dni_ok(number: str, letter: str) -> bool:
    """``number`` is the DNI's 8 digits or the NIE's prefix letter and 7 digits."""
    head = number[:1].upper()
    if head and head in "XYZ":
        number = str("XYZ".index(head)) + number[1:]
    return number.isdigit() and len(number) == 8 and _DNI_LETTERS[int(number) % 23] == letter.upper()


def _dnis(text: str) -> Iterator[tuple[int, int]]:
    for m in _DNI.finditer(text):
        number = m.group(1) or "".join(m.group(i) or "" for i in (2, 3, 4, 5, 6))
        sep, letter = m.group(7), m.group(8)
        if sep == " " and letter.islower():  # "12345678 y ...": a Spanish conjunction, not a control letter
            continue
        if dni_ok(number, letter):
            yield m.span()


# -- Indian Aadhaar --------------------------------------------------------------------------
# 12 digits, the first 2-9, the last a Verhoeff check digit; printed 4-4-4. Twelve bare digits
# only after an Aadhaar keyword (a random 12-digit number passes Verhoeff one time in ten).
_AADHAAR = re.compile(
    r"(?<![\w\-.])(?<![0-9][ \-])([2-9][0-9]{3})([ \-]?)([0-9]{4})\2([0-9]{4})(?![\w\-])(?![ .][0-9])"
)
_AADHAAR_WORDS = re.compile(r"(?i)\b(?:aadhaar|aadhar|adhaar|uid|uidai)\b|आधार")
_VERHOEFF_D = (
    (0, 1, 2, 3, 4, 5, 6, 7, 8, 9),
    (1, 2, 3, 4, 0, 6, 7, 8, 9, 5),
    (2, 3, 4, 0, 1, 7, 8, 9, 5, 6),
    (3, 4, 0, 1, 2, 8, 9, 5, 6, 7),
    (4, 0, 1, 2, 3, 9, 5, 6, 7, 8),
    (5, 9, 8, 7, 6, 0, 4, 3, 2, 1),
    (6, 5, 9, 8, 7, 1, 0, 4, 3, 2),
    (7, 6, 5, 9, 8, 2, 1, 0, 4, 3),
    (8, 7, 6, 5, 9, 3, 2, 1, 0, 4),
    (9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
)
_VERHOEFF_P = (
    (0, 1, 2, 3, 4, 5, 6, 7, 8, 9),
    (1, 5, 7, 6, 2, 8, 3, 0, 9, 4),
    (5, 8, 0, 3, 7, 9, 6, 1, 4, 2),
    (8, 9, 1, 6, 0, 4, 3, 5, 2, 7),
    (9, 4, 5, 3, 1, 2, 6, 8, 7, 0),
    (4, 2, 8, 6, 5, 7, 3, 9, 0, 1),
    (2, 7, 9, 3, 8, 0, 6, 4, 1, 5),
    (7, 0, 4, 6, 9, 1, 3, 2, 5, 8),
)


def verhoeff_ok(digits: str) -> bool:
    """The Verhoeff (dihedral group D5) check: catches every single-digit error and adjacent swap."""
    c = 0
    for i, ch in enumerate(reversed(digits)):
        c = _VERHOEFF_D[c][_VERHOEFF_P[i % 8][ord(ch) - 48]]
    return c == 0


def _aadhaars(text: str) -> Iterator[tuple[int, int]]:
    for m in _AADHAAR.finditer(text):
        if not verhoeff_ok(m.group(1) + m.group(3) + m.group(4)):
            continue
        if m.group(2) or _before(text, m.start(), _AADHAAR_WORDS, 40):
            yield m.span()


# -- Dutch BSN -------------------------------------------------------------------------------
# 9 digits (or 1234.56.789) passing the 11-check; one random 9-digit number in 11 passes, so a
# BSN keyword must come first.
_BSN = re.compile(r"(?<![\w.\-])([0-9]{4})([. ]?)([0-9]{2})\2([0-9]{3})(?![\w\-])(?![.][0-9])")
_BSN_WORDS = re.compile(
    r"(?i)\b(?:bsn|burgerservicenummer|burger\s?service\s?nummer|sofi-?nummer|citizen\s+service\s+number)\b"
)


def bsn_ok(digits: str) -> bool:
    """The 11-check: 9*d1 + 8*d2 + ... + 2*d8 - d9 is a non-zero multiple of 11."""
    if len(digits) != 9 or not digits.isdigit():
        return False
    total = sum((9 - i) * (ord(c) - 48) for i, c in enumerate(digits[:8])) - (ord(digits[8]) - 48)
    return total % 11 == 0 and total != 0


def _bsns(text: str) -> Iterator[tuple[int, int]]:
    for m in _BSN.finditer(text):
        if bsn_ok(m.group(1) + m.group(3) + m.group(4)) and _before(text, m.start(), _BSN_WORDS, 40):
            yield m.span()


# -- IP addresses ----------------------------------------------------------------------------
# IPv4: four decimal octets 0-255 without leading zeros, not part of a longer dotted number, not
# 0.x.y.z other than 0.0.0.0, and not right after a version or section keyword or a comparison
# ("version 1.2.3.4", "section 4.1.1.2", "pkg==1.2.0.2"). IPv6: a run of hex digits and colons
# (optionally ending in a dotted quad, optionally with a %zone) that ipaddress accepts, with at
# least one digit so that words like "Add::Bed" are left alone.
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_IPV4 = re.compile(rf"(?<![\w.])(?:{_OCTET}\.){{3}}{_OCTET}(?!\w)(?!\.\w)")
_VERSION_BEFORE = re.compile(
    r"(?i)(?:\b(?:version|ver|release|build|firmware|fw|rev|revision|patch|oid|chapter|section|sec|clause|figure"
    r"|fig|table|step|rule|paragraph|para|art|article)\.?|§|[=<>!~]=)\s*[:=#]?\s*$"
)
_IPV6 = re.compile(
    r"(?:(?<![\w:])|(?<=[G-Zg-z_]:))(?=[0-9A-Fa-f]{0,4}:)[0-9A-Fa-f:]{2,}+(?:\.[0-9]{1,3}){0,3}+(?:%[0-9A-Za-z_.\-]{1,32}+)?"
)


def _ipv6_ok(candidate: str) -> bool:
    address = candidate.split("%", 1)[0]
    if address.count(":") < 2 or not any(c.isdigit() for c in address):
        return False
    groups = [g for g in address.split(":") if g]
    if address != "::1" and (len(groups) < 2 or max(len(g) for g in groups) < 3):
        return False  # Python slices (x[1::2]) and other short colon runs
    try:
        ipaddress.IPv6Address(candidate)
    except ValueError:
        return False
    return True


def _ips(text: str) -> Iterator[tuple[int, int]]:
    if "." in text:
        for m in _IPV4.finditer(text):
            if m.group().startswith("0.") and m.group().strip("0.") != "":  # 0.x.y.z: versions, not hosts
                continue
            if not _before(text, m.start(), _VERSION_BEFORE, 20):
                yield m.span()
    if ":" in text:
        for m in _IPV6.finditer(text):
            start, end = m.span()
            if end - start > 60 or _glued(text, end):
                continue
            candidate = m.group()
            if candidate.endswith(":") and not candidate.endswith("::") and "%" not in candidate:
                candidate, end = candidate[:-1], end - 1  # "... 2001:db8::1: connection refused"
            if _ipv6_ok(candidate):
                yield start, end


# -- phone numbers ---------------------------------------------------------------------------
# A run of digit groups joined by single separators (space . - /) or parentheses, optionally
# after "+". A phone number is a leading window of whole groups that is:
#   +CC ...           an assigned country code, 8-15 digits in all (E.164), a "(0)" trunk marker not
#                     counted; +1 needs 11 digits;
#   00CC ...          international prefix, then the same;
#   0... national     UK, DE, FR, IN and most of Europe: 9-12 digits, first group 2-5 digits,
#                     the others 2-8; dots only in the French five pairs, "/" only after the
#                     area code; dates, ZIP+4 codes and the SSN layout excluded;
#   NANP              [1] NXX NXX XXXX (area code and exchange starting 2-9), one separator style;
#   IN mobile         XXXXX XXXXX starting 6-9.
# Ten to twelve digits in another layout, or unformatted, count only right after a phone keyword;
# nothing without "+" counts right after an order/SKU/reference keyword or "#", or when the run
# continues a number (-2.002 319 ..., 1,234 ...) or a letters-and-digits code.
_PHONE_RUN = re.compile(r"(?<![\w+])(\+)?(?:\([0-9]{1,5}\) ?|[0-9])(?:[ .\-/]?(?:\([0-9]{1,5}\)|[0-9]))*+")
_PHONE_GROUP = re.compile(r"\(([0-9]+)\)|[0-9]+")
_PHONE_WORDS = re.compile(
    r"(?i)(?:\b(?:tel|tele?phone|phone|ph|mob|mobile|cell|cellphone|fax|call|sms|whatsapp|contact"
    r"|dial|hotline|telefon|telefonnummer|handy|mobil|t[ée]l|t[ée]l[ée]phone|portable|tel[ée]fono|m[óo]vil)\b|☎|📞)"
    r"[^0-9\n]{0,25}$"
)
_CODE_BEFORE = re.compile(
    r"(?i)(?:\b(?:order|invoice|sku|part|item|article|ref|reference|serial|model|tracking|ticket|case|po|batch"
    r"|lot|build|version|isbn|account|acct|zip|postcode|product|catalog(?:ue)?|booking|confirmation)\b"
    r"(?:\s*(?:no|nr|num|number|id|code)\b)?\.?|#)\s*[:#=]?\s*$"
)


# ITU-T E.164 country codes in use (prefix-free: one, two or three digits).
_COUNTRY_CODE_TABLE = (
    "1 7 20 27 30 31 32 33 34 36 39 40 41 43 44 45 46 47 48 49 51 52 53 54 55 56 57 58 60 61 62 63 64 65 66 81 82 84"
    " 86 90 91 92 93 94 95 98 211 212 213 216 218 220 221 222 223 224 225 226 227 228 229 230 231 232 233 234 235"
    " 236 237 238 239 240 241 242 243 244 245 246 247 248 249 250 251 252 253 254 255 256 257 258 260 261 262 263"
    " 264 265 266 267 268 269 290 291 297 298 299 350 351 352 353 354 355 356 357 358 359 370 371 372 373 374 375"
    " 376 377 378 379 380 381 382 383 385 386 387 389 420 421 423 500 501 502 503 504 505 506 507 508 509 590 591"
    " 592 593 594 595 596 597 598 599 670 672 673 674 675 676 677 678 679 680 681 682 683 685 686 687 688 689 690"
    " 691 692 800 808 850 852 853 855 856 870 878 880 881 882 883 886 888 960 961 962 963 964 965 966 967 968 970"
    " 971 972 973 974 975 976 977 979 992 993 994 995 996 998"
)
_COUNTRY_CODES = frozenset(_COUNTRY_CODE_TABLE.split())


def _country_code_ok(digits: str) -> bool:
    return any(digits[:k] in _COUNTRY_CODES for k in (1, 2, 3))


class _Group(NamedTuple):
    digits: str
    paren: bool
    start: int
    end: int
    sep: str  # the text between the previous group and this one


def _looks_like_date(window: Sequence[_Group]) -> bool:
    if len(window) < 3:
        return False
    a, b, c = window[0].digits, window[1].digits, window[2].digits
    if len(a) == 4 and len(b) == 2 and len(c) == 2 and window[1].sep == "-":  # 2024-03-15
        return True
    return len(a) <= 2 and len(b) <= 2 and len(c) == 4 and c[:2] in ("19", "20")  # 15.03.2024


def _national(window: Sequence[_Group], digits: str) -> bool:
    """The national layouts, with their separator conventions (which keep decimals, dates,
    page ranges and dotted identifiers out)."""
    lens = [len(g.digits) for g in window]
    seps = [g.sep for g in window[1:]]
    n = len(digits)
    if any(g.paren for g in window[1:]) or sum(1 for g in window if not g.digits.strip("0")) > 1:
        return False  # "00 00" runs are dumps and tables
    if digits[0] == "0" and 9 <= n <= 12 and 2 <= lens[0] <= 5 and all(2 <= x <= 8 for x in lens[1:]):
        if (lens == [3, 2, 4] and seps == ["-", "-"]) or (lens == [5, 4] and seps == ["-"]):
            return False  # the SSN layout; a ZIP+4 code
        if all(x == 2 for x in lens) and n != 10:  # pairs: French numbers have five
            return False
        if "." in seps:  # only French numbers are written with dots: 06.39.98.12.34
            return n == 10 and all(x == 2 for x in lens) and set(seps) == {"."}
        if "/" in seps:  # German area code / subscriber: 030/2312512
            return seps[0] == "/" and seps.count("/") == 1
        return True
    nanp = window[1:] if window[0].digits == "1" and not window[0].paren else window
    if [len(g.digits) for g in nanp] == [3, 3, 4] and nanp[0].digits[0] > "1" and nanp[1].digits[0] > "1":
        exchange, line = nanp[1].sep, nanp[2].sep
        if nanp[0].paren:  # (415) 555-0123
            ok = exchange in ("", " ") and line in ("-", " ", ".")
        else:  # 415-555-0123, 415.555.0123, 415 555 0123
            ok = exchange == line and line in ("-", " ", ".")
        if nanp is not window:  # 1-415-555-0123, 1 (415) 555-0123
            ok = ok and nanp[0].sep in ("", " ", "-", line)
        return ok
    return lens == [5, 5] and digits[0] in "6789" and seps[0] in (" ", "-")  # Indian mobile: 98765 43210


def _is_phone(window: Sequence[_Group], plus: bool, context: int) -> bool:
    """``context``: 1 after a phone keyword, -1 after an order/reference keyword, else 0."""
    digits = "".join(g.digits for g in window)
    if plus:
        core = "".join(g.digits for g in window if not (g.paren and g.digits == "0"))
        if not core:
            return False
        if core[0] == "1":
            return len(core) == 11 and core[1] in "23456789"
        return 8 <= len(core) <= 15 and _country_code_ok(core)
    if context < 0 or _looks_like_date(window):
        return False
    first = window[0].digits
    if first.startswith("00"):  # 00 + country code; not 0.0123 or 00:00:00.123456
        if len(first) > 5 or any(g.sep == "." or g.paren for g in window[1:]):
            return False
        if first == "00" and (len(window) < 2 or len(window[1].digits) > 3):
            return False
        return (len(window) > 1 or context > 0) and 8 <= len(digits) - 2 <= 15 and _country_code_ok(digits[2:])
    if len(window) > 1 and _national(window, digits):
        return True
    # Announced by a keyword: ten to twelve digits in any other layout, or none.
    lens = [len(g.digits) for g in window]
    return context > 0 and 10 <= len(digits) <= 12 and min(lens) >= 2 and not any(g.paren for g in window[1:])


def _after_number(text: str, start: int) -> bool:
    """-2.002 319 304 3622, 1,234 567 8901: a run that continues a number is not a phone number."""
    if start == 0:
        return False
    before = text[start - 1]
    return before == "-" or (before in ".,/" and start >= 2 and "0" <= text[start - 2] <= "9")


def _phones(text: str) -> Iterator[tuple[int, int]]:
    for run in _PHONE_RUN.finditer(text):
        if run.end() - run.start() < 7 or _after_number(text, run.start()):
            continue
        plus = run.group(1) is not None
        groups: list[_Group] = []
        prev = run.start() + (1 if plus else 0)
        i = 0
        iterator = _PHONE_GROUP.finditer(text, prev, run.end())
        while True:
            for m in iterator:
                groups.append(
                    _Group(m.group(1) or m.group(), m.group(1) is not None, m.start(), m.end(), text[prev : m.start()])
                )
                prev = m.end()
                if len(groups) - i > 8:
                    break
            if i >= len(groups):
                break
            lead_plus = plus and i == 0
            start = run.start() if lead_plus else groups[i].start
            context: int | None = None  # looked up only for a window that could need it
            found = 0
            for k in range(min(8, len(groups) - i), 0, -1):
                nxt = i + k
                if nxt < len(groups):
                    if groups[nxt].sep != " ":  # only a space may separate a phone number from what follows
                        continue
                    if len(groups[nxt].digits) == 2 and all(len(g.digits) == 2 for g in groups[i:nxt]):
                        continue  # part of a longer run of pairs (a hex dump, a table)
                elif _glued(text, groups[nxt - 1].end):
                    continue
                window = groups[i:nxt]
                if not _is_phone(window, lead_plus, 1):  # a keyword before it is the most it could need
                    continue
                if not lead_plus:
                    if context is None:
                        negative = (i == 0 and _continues_code(text, start)) or _before(text, start, _CODE_BEFORE, 40)
                        context = -1 if negative else int(_before(text, start, _PHONE_WORDS, 40))
                    if not _is_phone(window, False, context):
                        continue
                found = k
                break
            if not found:
                break
            yield start, groups[i + found - 1].end
            i += found


# -- the redactor ----------------------------------------------------------------------------
_DETECTORS: dict[str, _Detector] = {
    "email": _emails,
    "iban": _ibans,
    "card": _cards,
    "ssn": _ssns,
    "nino": _ninos,
    "dni": _dnis,
    "aadhaar": _aadhaars,
    "bsn": _bsns,
    "ip": _ips,
    "phone": _phones,
}
# The fewest ASCII digits an item of each type has: a cheap first filter for short texts.
_MIN_DIGITS = {"email": 0, "iban": 2, "card": 13, "ssn": 9, "nino": 6, "dni": 7, "aadhaar": 12, "bsn": 9}
_MIN_DIGITS |= {"ip": 1, "phone": 7}


class Redactor:
    """Finds and replaces PII. Immutable and thread-safe once built; build one and share it.

    ``types``: which of ``TYPES`` to detect (default: all). ``placeholder``: a template where
    ``{TYPE}`` and ``{type}`` are replaced by the type's name (upper/lower case), or a function of
    the ``Span``. ``max_length``: only the first ``max_length`` characters are scanned, and
    ``redact`` drops the rest (replaced by a ``[TRUNCATED n chars]`` marker) rather than pass
    unscanned text through; ``None`` scans everything (every detector is linear). ``allow``: exact
    strings never redacted (a support address, ``127.0.0.1``). ``max_depth``: how deep
    ``redact_obj`` goes.
    """

    def __init__(
        self,
        types: Iterable[str] | None = None,
        *,
        placeholder: Placeholder = DEFAULT_PLACEHOLDER,
        max_length: int | None = DEFAULT_MAX_LENGTH,
        allow: Iterable[str] = (),
        max_depth: int = 64,
    ) -> None:
        wanted = set(TYPES if types is None else types)
        unknown = wanted - set(TYPES)
        if unknown:
            raise ValueError(f"unknown PII types {sorted(unknown)}; known: {', '.join(TYPES)}")
        if max_length is not None and max_length < 1:
            raise ValueError("max_length must be positive (or None)")
        self.types: tuple[str, ...] = tuple(t for t in TYPES if t in wanted)
        self.placeholder = placeholder
        self.max_length = max_length
        self.allow = frozenset(allow)
        self.max_depth = max_depth

    def find(self, text: str) -> list[Span]:
        """Non-overlapping spans in text order; where candidates overlap, the type earlier in
        ``TYPES`` wins, then the longer span."""
        if not isinstance(text, str):
            text = str(text)
        if self.max_length is not None and len(text) > self.max_length:
            text = text[: self.max_length]
        digits = sum(map(text.count, "0123456789"))
        if not digits and "@" not in text:  # every type has a digit, except e-mail, which has "@"
            return []
        candidates: list[tuple[int, int, int, str]] = []
        for rank, kind in enumerate(self.types):
            if digits >= _MIN_DIGITS[kind]:
                candidates.extend((start, end, rank, kind) for start, end in _DETECTORS[kind](text))
        spans = [Span(kind, start, end, text[start:end]) for start, end, _, kind in _resolve(candidates)]
        # After overlap resolution: an allowed e-mail address also protects the digits inside it.
        return [s for s in spans if s.text not in self.allow] if self.allow else spans

    def render(self, span: Span) -> str:
        if callable(self.placeholder):
            return self.placeholder(span)
        return self.placeholder.replace("{TYPE}", span.type.upper()).replace("{type}", span.type)

    def redact(self, text: str) -> str:
        """``text`` with every span replaced by its placeholder (the same object when nothing is found)."""
        if not isinstance(text, str):
            text = str(text)
        over = 0 if self.max_length is None else max(0, len(text) - self.max_length)
        spans = self.find(text)
        if not spans and not over:
            return text
        parts: list[str] = []
        last = 0
        for span in spans:
            parts.append(text[last : span.start])
            parts.append(self.render(span))
            last = span.end
        parts.append(text[last : len(text) - over])
        if over:
            parts.append(f"[TRUNCATED {over} chars]")
        return "".join(parts)

    def redact_obj(self, value: Any) -> Any:
        """A copy of a JSON-like value with every string redacted: dict values (not keys), list
        and tuple items, and integers that are PII by themselves (a card number sent as a JSON
        number). Other values are returned as they are; containers nested deeper than
        ``max_depth`` (or cyclic) become ``"[TRUNCATED]"``."""
        return self._obj(value, 0)

    def _obj(self, value: Any, depth: int) -> Any:
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, bool) or not isinstance(value, int | dict | list | tuple):
            return value
        if isinstance(value, int):
            if -(10**19) < value < 10**20:
                digits = str(value)
                spans = self.find(digits)
                if spans and spans[0].start == 0 and spans[0].end == len(digits):
                    return self.render(spans[0])
            return value
        if depth >= self.max_depth:
            return "[TRUNCATED]"
        if isinstance(value, dict):
            return {k: self._obj(v, depth + 1) for k, v in value.items()}
        items = [self._obj(v, depth + 1) for v in value]
        return items if isinstance(value, list) else tuple(items)


def _resolve(candidates: list[tuple[int, int, int, str]]) -> list[tuple[int, int, int, str]]:
    """Drop overlaps: within each cluster of overlapping candidates, keep the best-ranked, then
    the longest, then the earliest; linear when nothing overlaps (the usual case)."""
    candidates.sort()
    out: list[tuple[int, int, int, str]] = []
    i = 0
    while i < len(candidates):
        j, cluster_end = i + 1, candidates[i][1]
        while j < len(candidates) and candidates[j][0] < cluster_end:
            cluster_end = max(cluster_end, candidates[j][1])
            j += 1
        if j == i + 1:
            out.append(candidates[i])
        else:
            chosen: list[tuple[int, int, int, str]] = []
            for c in sorted(candidates[i:j], key=lambda c: (c[2], c[0] - c[1], c[0])):
                if all(c[1] <= o[0] or c[0] >= o[1] for o in chosen):
                    chosen.append(c)
            out.extend(sorted(chosen))
        i = j
    return out


# -- logging ---------------------------------------------------------------------------------
_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
_PLAIN = logging.Formatter()


class RedactingFilter(logging.Filter):
    """Redacts a record's message (formatted with its arguments), its extras (strings, and the
    strings inside dict/list/tuple extras) and, with ``exceptions``, its traceback. Never drops a
    record; if redaction itself fails, the message is replaced (fail closed).

    Install it on a handler (``handler.addFilter(RedactingFilter())``) so that every record that
    handler writes, whichever logger it came from, is redacted. A redacted traceback is moved from
    ``exc_info`` to ``exc_text`` (what ``logging.Formatter`` prints) and to an ``exception`` extra
    (what ``logs.JsonFormatter`` prints); handlers that need the live exception should come first.
    """

    def __init__(self, redactor: Redactor | None = None, *, exceptions: bool = True) -> None:
        super().__init__()
        self.redactor = redactor if redactor is not None else Redactor()
        self.exceptions = exceptions

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            self._redact(record)
        except Exception:
            record.msg, record.args = "[REDACTION FAILED]", None
            record.exc_info = record.exc_text = record.stack_info = None
            for key in vars(record).keys() - _RECORD_FIELDS:
                if not key.startswith("_"):
                    setattr(record, key, "[REDACTION FAILED]")
        return True

    def _redact(self, record: logging.LogRecord) -> None:
        r = self.redactor
        try:
            message = record.getMessage()
        except Exception:  # a msg/args mismatch: keep both, redacted, rather than lose the line
            message = f"{record.msg} {record.args!r}"
        record.msg, record.args = r.redact(message), None
        for key, value in list(vars(record).items()):
            if key in _RECORD_FIELDS or key.startswith("_"):
                continue
            new = self._value(value)
            if new is not value:
                setattr(record, key, new)
        if self.exceptions:
            if record.exc_info:
                record.exc_text = r.redact(_PLAIN.formatException(record.exc_info))
                record.exc_info = None
                setattr(record, "exception", record.exc_text)  # noqa: B010 (not a LogRecord field)
            elif record.exc_text:
                record.exc_text = r.redact(record.exc_text)
            if record.stack_info:
                record.stack_info = r.redact(record.stack_info)

    def _value(self, value: Any) -> Any:
        if isinstance(value, str | int | dict | list | tuple):
            return self.redactor.redact_obj(value)
        if value is None or isinstance(value, float):
            return value
        return self.redactor.redact(str(value))  # the JSON formatter would write str(value) anyway
