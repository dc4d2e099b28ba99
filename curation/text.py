"""Small text helpers shared by ingest, profiling and tagging: language and caption decoding."""

from __future__ import annotations

import re

__all__ = [
    "detect_lang",
    "decode_caption",
    "strip_invisible",
    "has_surrogates",
    "escape_surrogates",
    "CaptionDecodeError",
    "MAX_CAPTION_CHARS",
]

MAX_CAPTION_CHARS = 64_000
"""Default cap: longer captions are truncated at ingest (and counted): a 1 MB 'caption' is an attack,
not text. Ingest's ``max_caption_chars`` raises or lowers it; the review UI accepts edits up to this."""

_SURROGATE = re.compile("[\ud800-\udfff]")

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002a6df]")
_LATIN = re.compile(r"[A-Za-z]")


_INVISIBLE = re.compile("[\u202a-\u202e\u2066-\u2069\u200b\u2060\ufeff]")
"""Bidi embeddings, overrides and isolates (U+202A-202E, U+2066-2069: "txt.exe" shown as
"exe.txt"), zero-width space, word joiner and BOM: invisible on screen, they change what a
caption looks like or how it tokenises. Zero-width (non-)joiners and the LRM / RLM marks stay:
Persian, Indic scripts and emoji sequences need them."""


def strip_invisible(text: str) -> tuple[str, int]:
    """The text without the invisible formatting characters of ``_INVISIBLE``, and how many went."""
    clean, n = _INVISIBLE.subn("", text)
    return clean, n


class CaptionDecodeError(ValueError):
    pass


def has_surrogates(text: str) -> bool:
    """Unpaired surrogates ("\\udc80": JSON escapes, or non-UTF-8 file names that Python decoded with
    surrogateescape) are not Unicode: Arrow and Lance cannot store them, so a reader must check."""
    return _SURROGATE.search(text) is not None


def _escape(m: re.Match) -> str:
    code = ord(m.group())
    return f"\\x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"\\u{code:04x}"


def escape_surrogates(text: str) -> str:
    """``text`` with each unpaired surrogate written out: a non-UTF-8 byte of a file name (which
    Python reads as U+DC80-U+DCFF) as ``\\xff``, any other as ``\\ud800``. Storable,
    deterministic, and visibly not the original (a row carrying it also carries an error)."""
    return _SURROGATE.sub(_escape, text)


def detect_lang(text: str) -> str:
    """'zh', 'en', 'mixed' or 'und' from the share of CJK and Latin letters: cheap and script-based,
    which is what tokenisation (jieba or whitespace) and concept matching need to know."""
    cjk = len(_CJK.findall(text))
    latin = len(_LATIN.findall(text))
    if cjk == 0 and latin == 0:
        return "und"
    if cjk and latin:
        # a few English words in Chinese (brand names) stay zh, and vice versa
        share = cjk / (cjk + latin / 4)  # ~4 Latin letters per word vs one CJK char per morpheme
        return "zh" if share > 0.8 else "en" if share < 0.2 else "mixed"
    return "zh" if cjk else "en"


def decode_caption(data: bytes) -> str:
    """Decode caption bytes: UTF-8 (BOM tolerated), UTF-16 with a BOM; anything else is an error
    (guessing legacy encodings turns garbage into plausible-looking wrong captions). NUL is refused
    in both encodings: one rule, whatever the bytes looked like."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            text = data.decode("utf-16")
        except UnicodeDecodeError as e:
            raise CaptionDecodeError(f"invalid UTF-16: {e.reason}") from None
        if has_surrogates(text):
            raise CaptionDecodeError("invalid UTF-16: unpaired surrogate")
    else:
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise CaptionDecodeError(f"not UTF-8 at byte {e.start}") from None
    if "\x00" in text:
        raise CaptionDecodeError("NUL bytes in caption")
    return text.strip()
