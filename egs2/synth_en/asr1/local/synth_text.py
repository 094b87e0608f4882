"""English sentence pool for the synthetic corpus, from Debian text packages only.

Sources (read-only, found under /usr/share):
  * fortunes / fortunes-min: fortune cookie files (entries separated by lines with "%").
  * wordnet-base: the usage examples quoted inside the glosses of the WordNet data files.

Normalisation (``normalize``): ASCII-fold, expand a few abbreviations/symbols, drop sentences that
contain digits, code-like symbols or all-capital tokens (acronyms are spoken letter by letter by the
synthesisers and would not match the transcript), then keep only A-Z, apostrophes and single spaces,
upper case.  Sentences of 4-20 words are kept and de-duplicated.
"""

import collections
import glob
import os
import re
import unicodedata

FORTUNES_DIR = os.environ.get("SYNTH_EN_FORTUNES_DIR", "/usr/share/games/fortunes")
WORDNET_DIR = os.environ.get("SYNTH_EN_WORDNET_DIR", "/usr/share/wordnet")

MIN_WORDS = 4
MAX_WORDS = 20
NORM_RE = re.compile(r"^[A-Z']+( [A-Z']+)*$")

# fortune files that are not prose
_SKIP_FORTUNE_FILES = {"ascii-art", "translate-me", "perl"}

_ABBREV = [
    (re.compile(r"\bMrs\.", re.I), "Missus"),
    (re.compile(r"\bMr\.", re.I), "Mister"),
    (re.compile(r"\bMs\.", re.I), "Miz"),
    (re.compile(r"\bDr\.", re.I), "Doctor"),
    (re.compile(r"\bSt\.(?= [A-Z])"), "Saint"),
    (re.compile(r"\bJr\.", re.I), "Junior"),
    (re.compile(r"\bvs\.", re.I), "versus"),
    (re.compile(r"\betc\.", re.I), "etcetera"),
    (re.compile(r"\be\.g\.", re.I), "for example"),
    (re.compile(r"\bi\.e\.", re.I), "that is"),
]
_TRANSLATE = {
    "\u2018": "'", "\u2019": "'", "\u201b": "'", "`": "'", "\u00b4": "'",
    "\u201c": '"', "\u201d": '"', "\u2013": " ", "\u2014": " ", "\u2026": " ",
}
# a sentence containing one of these is code, maths, markup or a list: dropped
_BAD_CHARS = re.compile(r"[0-9#$*=<>{}|\\^~_@\[\]+/%]")
_SENT_SPLIT = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]*[A-Z])")
_LABEL = re.compile(r"^\s*[A-Za-z][A-Za-z' .]{0,30}:\s+")


def _ascii(text):
    for a, b in _TRANSLATE.items():
        text = text.replace(a, b)
    text = unicodedata.normalize("NFKD", text)
    return text.encode("ascii", "ignore").decode("ascii")


def normalize(sentence, min_words=MIN_WORDS, max_words=MAX_WORDS):
    """Return the normalised transcript of ``sentence`` or None if it should be dropped."""
    s = _ascii(sentence)
    for pat, rep in _ABBREV:
        s = pat.sub(rep, s)
    s = _LABEL.sub("", s)
    s = s.replace("&", " and ")
    if _BAD_CHARS.search(s):
        return None
    # remaining single-letter abbreviations ("J. R. Smith", "U.S.") cannot be spoken reliably
    if re.search(r"\b[A-Za-z]\.\s*[A-Za-z]", s) or re.search(r"\b[B-HJ-Z]\.[\"')]*$", s.strip()):
        return None
    words = []
    for tok in re.split(r"[^A-Za-z']+", s):
        tok = tok.strip("'")
        tok = re.sub(r"'{2,}", "'", tok)
        if not tok:
            continue
        if len(tok) >= 2 and tok.isupper() and tok != "I'":
            return None  # acronym / shouted word
        words.append(tok.upper())
    if not (min_words <= len(words) <= max_words):
        return None
    out = " ".join(words)
    return out if NORM_RE.match(out) else None


def _fortune_entries(path):
    with open(path, encoding="utf-8", errors="replace") as f:
        entry = []
        for line in f:
            if line.rstrip("\n") == "%":
                if entry:
                    yield entry
                entry = []
            else:
                entry.append(line.rstrip("\n"))
        if entry:
            yield entry


def fortune_sentences(fortunes_dir=FORTUNES_DIR):
    files = sorted(
        p for p in glob.glob(os.path.join(fortunes_dir, "*"))
        if os.path.isfile(p) and not p.endswith((".dat", ".u8"))
        and os.path.basename(p) not in _SKIP_FORTUNE_FILES
    )
    for path in files:
        for entry in _fortune_entries(path):
            lines = []
            for line in entry:
                if re.match(r"^\s*--", line):  # attribution: ends the quote
                    break
                lines.append(line.strip())
            text = " ".join(lines)
            text = re.sub(r"\s+", " ", text).strip()
            for piece in _SENT_SPLIT.split(text):
                yield piece


def wordnet_sentences(wordnet_dir=WORDNET_DIR):
    for pos in ("adj", "adv", "noun", "verb"):
        path = os.path.join(wordnet_dir, "data." + pos)
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(" "):  # licence header
                    continue
                bar = line.find(" | ")
                if bar < 0:
                    continue
                for ex in re.findall(r'"([^"]+)"', line[bar + 3:]):
                    yield ex


def text_sources_present(fortunes_dir=FORTUNES_DIR, wordnet_dir=WORDNET_DIR):
    """Return a list of (what, debian package) that is missing."""
    missing = []
    if not os.path.isfile(os.path.join(fortunes_dir, "fortunes")):
        missing.append((os.path.join(fortunes_dir, "fortunes"), "fortunes-min"))
    if not os.path.isfile(os.path.join(fortunes_dir, "computers")):
        missing.append((os.path.join(fortunes_dir, "computers"), "fortunes"))
    if not os.path.isfile(os.path.join(wordnet_dir, "data.noun")):
        missing.append((os.path.join(wordnet_dir, "data.noun"), "wordnet-base"))
    return missing


def load_sentences(top_words=0, fortunes_dir=FORTUNES_DIR, wordnet_dir=WORDNET_DIR):
    """Sorted list of unique normalised sentences (optionally vocabulary-restricted)."""
    seen = set()
    for src in (fortune_sentences(fortunes_dir), wordnet_sentences(wordnet_dir)):
        for raw in src:
            norm = normalize(raw)
            if norm is not None:
                seen.add(norm)
    sents = sorted(seen)
    if top_words and top_words > 0:
        counts = collections.Counter(w for s in sents for w in s.split())
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        vocab = {w for w, _ in ranked[:top_words]}
        sents = [s for s in sents if all(w in vocab for w in s.split())]
    return sents


if __name__ == "__main__":
    import sys

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    ss = load_sentences(n)
    words = collections.Counter(w for s in ss for w in s.split())
    print(f"{len(ss)} sentences, {len(words)} word types, "
          f"{sum(len(s.split()) for s in ss) / max(1, len(ss)):.1f} words/sentence")
    import random

    for s in random.Random(0).sample(ss, min(15, len(ss))):
        print(s)
