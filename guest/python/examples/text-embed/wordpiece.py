"""BERT's WordPiece tokenizer in plain Python, cutting text exactly as the
model's own ``tokenizer.json`` does for all-MiniLM-L6-v2: special tokens
kept whole, BERT's normalizer (control characters dropped, whitespace
unified, CJK characters spaced, accents stripped, lower case), splitting
on whitespace and punctuation, then greedy longest-match WordPiece.

Unicode properties come from Python's ``unicodedata``. The Rust example's
tokenizer reads Unicode 9 tables for categories and decomposition, so the
two can differ on characters assigned since 2016 in the categories that
matter here (format, non-spacing mark, punctuation), and on nothing else.
"""

import re
import string
import unicodedata

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
MAX_TOKENS = 128
MAX_WORD_CHARS = 100

# Unicode's White_Space property, as Rust's `char::is_whitespace` has it.
# Python's `str.isspace` also counts U+001C..U+001F, which BERT drops as
# control characters.
WHITESPACE = frozenset(
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005"
    "\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)

# The code points BERT spaces out as whole words: the CJK ideograph blocks.
CJK_RANGES = (
    (0x4E00, 0x9FFF),
    (0x3400, 0x4DBF),
    (0x20000, 0x2A6DF),
    (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F),
    (0x2B920, 0x2CEAF),
    (0xF900, 0xFAFF),
    (0x2F800, 0x2FA1F),
)

_SPECIAL = re.compile("(" + "|".join(re.escape(token) for token in SPECIAL_TOKENS) + ")")


def is_blank(text):
    """Whether ``text`` is empty or only whitespace."""
    return all(c in WHITESPACE for c in text)


def _is_control(c):
    # Tab, line feed and carriage return count as whitespace instead.
    return c not in "\t\n\r" and unicodedata.category(c) in ("Cc", "Cf", "Co")


def _is_cjk(c):
    code = ord(c)
    return any(low <= code <= high for low, high in CJK_RANGES)


ASCII_PUNCTUATION = frozenset(string.punctuation)


def _is_punctuation(c):
    return c in ASCII_PUNCTUATION or unicodedata.category(c).startswith("P")


def normalize(text):
    """BERT's normalizer: clean, space out CJK, strip accents, lower-case."""
    cleaned = []
    for c in text:
        if c == "\0" or c == "\ufffd" or _is_control(c):
            continue
        if c in WHITESPACE:
            cleaned.append(" ")
        elif _is_cjk(c):
            cleaned.append(" " + c + " ")
        else:
            cleaned.append(c)
    decomposed = unicodedata.normalize("NFD", "".join(cleaned))
    # Lower-cased one code point at a time, as Rust's `char::to_lowercase`:
    # `str.lower` would turn a final sigma into `ς`.
    return "".join(c.lower() for c in decomposed if unicodedata.category(c) != "Mn")


def pre_tokenize(text):
    """Words: split on whitespace, each punctuation character its own."""
    words = []
    for chunk in text.split(" "):
        word = []
        for c in chunk:
            if c in WHITESPACE:
                if word:
                    words.append("".join(word))
                    word = []
            elif _is_punctuation(c):
                if word:
                    words.append("".join(word))
                    word = []
                words.append(c)
            else:
                word.append(c)
        if word:
            words.append("".join(word))
    return words


class WordPiece:
    """The tokenizer over a vocabulary: one token per line, the line number
    being its id."""

    def __init__(self, vocab_text):
        self.vocab = {}
        for index, line in enumerate(vocab_text.splitlines()):
            self.vocab[line.rstrip()] = index
        self.unk = self.vocab["[UNK]"]
        self.cls = self.vocab["[CLS]"]
        self.sep = self.vocab["[SEP]"]

    def _word(self, word, out):
        if len(word) > MAX_WORD_CHARS:
            out.append(self.unk)
            return
        pieces = []
        start = 0
        while start < len(word):
            end = len(word)
            found = None
            while start < end:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                found = self.vocab.get(piece)
                if found is not None:
                    break
                end -= 1
            if found is None:
                out.append(self.unk)
                return
            pieces.append(found)
            start = end
        out.extend(pieces)

    def encode(self, text):
        """The ids of ``text`` framed by ``[CLS]`` and ``[SEP]``, cut to the
        model's 128 tokens."""
        ids = []
        # Special tokens are matched in the text as sent, before it is
        # normalized, and are never split.
        for index, part in enumerate(_SPECIAL.split(text)):
            if index % 2:
                ids.append(self.vocab[part])
            elif part:
                for word in pre_tokenize(normalize(part)):
                    self._word(word, ids)
        return [self.cls] + ids[: MAX_TOKENS - 2] + [self.sep]
