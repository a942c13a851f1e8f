// BERT's WordPiece tokenizer, cutting text exactly as the model's own
// tokenizer.json does for all-MiniLM-L6-v2: special tokens kept whole,
// BERT's normalizer (control characters dropped, whitespace unified, CJK
// characters spaced, accents stripped, lower case), splitting on
// whitespace and punctuation, then greedy longest-match WordPiece.
//
// The engine inside the component has no Unicode database (no
// String.prototype.normalize, no \p{...}), so the properties come from
// `unicode-data.js`, which build.mjs writes from Node's own at build time.

import { CONTROL, DECOMPOSITIONS, NONSPACING_MARKS, PUNCTUATION, WHITESPACE } from './unicode-data.js';

const SPECIAL_TOKENS = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]'];
const MAX_TOKENS = 128;
const MAX_WORD_CHARS = 100;
const CJK_RANGES = [
  [0x4e00, 0x9fff], [0x3400, 0x4dbf], [0x20000, 0x2a6df], [0x2a700, 0x2b73f],
  [0x2b740, 0x2b81f], [0x2b920, 0x2ceaf], [0xf900, 0xfaff], [0x2f800, 0x2fa1f],
];
const SPECIAL = new RegExp(`(${SPECIAL_TOKENS.map((t) => t.replace(/[[\]]/g, '\\$&')).join('|')})`);

/** Whether `code` falls in one of the sorted, inclusive `ranges`. */
function within(ranges, code) {
  let low = 0;
  let high = ranges.length - 1;
  while (low <= high) {
    const middle = (low + high) >> 1;
    const [start, end] = ranges[middle];
    if (code < start) high = middle - 1;
    else if (code > end) low = middle + 1;
    else return true;
  }
  return false;
}

const isWhitespace = (code) => WHITESPACE.has(code);
const isControl = (code) => code !== 0x09 && code !== 0x0a && code !== 0x0d && within(CONTROL, code);
const isCjk = (code) => CJK_RANGES.some(([start, end]) => code >= start && code <= end);
const isPunctuation = (code) => within(PUNCTUATION, code);

/** Whether `text` is empty or only whitespace. */
export function isBlank(text) {
  for (const c of text) if (!isWhitespace(c.codePointAt(0))) return false;
  return true;
}

// Hangul syllables decompose by arithmetic, as Unicode defines it.
const S_BASE = 0xac00, L_BASE = 0x1100, V_BASE = 0x1161, T_BASE = 0x11a7;
const V_COUNT = 21, T_COUNT = 28, S_COUNT = 11172;

/** The canonical decomposition of one code point, as code points. */
function decompose(code, out) {
  const s = code - S_BASE;
  if (s >= 0 && s < S_COUNT) {
    out.push(L_BASE + Math.floor(s / (V_COUNT * T_COUNT)), V_BASE + Math.floor((s % (V_COUNT * T_COUNT)) / T_COUNT));
    if (s % T_COUNT !== 0) out.push(T_BASE + (s % T_COUNT));
    return;
  }
  const parts = DECOMPOSITIONS.get(code);
  if (parts === undefined) out.push(code);
  else for (const part of parts) decompose(part, out);
}

/** BERT's normalizer: clean, space out CJK, strip accents, lower-case. */
export function normalize(text) {
  let out = '';
  for (const c of text) {
    const code = c.codePointAt(0);
    if (code === 0 || code === 0xfffd || isControl(code)) continue;
    if (isWhitespace(code)) {
      out += ' ';
      continue;
    }
    const pieces = [];
    decompose(code, pieces);
    let kept = '';
    for (const piece of pieces) {
      // Lower-cased one code point at a time, as Rust's char::to_lowercase:
      // a whole string would turn a final sigma into ς.
      if (!within(NONSPACING_MARKS, piece)) kept += String.fromCodePoint(piece).toLowerCase();
    }
    out += isCjk(code) ? ` ${kept} ` : kept;
  }
  return out;
}

/** Words: split on whitespace, each punctuation character its own. */
export function preTokenize(text) {
  const words = [];
  let word = '';
  for (const c of text) {
    const code = c.codePointAt(0);
    if (isWhitespace(code)) {
      if (word) words.push(word);
      word = '';
    } else if (isPunctuation(code)) {
      if (word) words.push(word);
      words.push(c);
      word = '';
    } else {
      word += c;
    }
  }
  if (word) words.push(word);
  return words;
}

/** The tokenizer over a vocabulary: one token per line, its number the id. */
export class WordPiece {
  constructor(vocabText) {
    this.vocab = new Map();
    const lines = vocabText.split('\n');
    // A final line break ends the last line; it does not start another.
    if (lines[lines.length - 1] === '') lines.pop();
    lines.forEach((line, index) => this.vocab.set(line.trimEnd(), index));
    this.unk = this.vocab.get('[UNK]');
    this.cls = this.vocab.get('[CLS]');
    this.sep = this.vocab.get('[SEP]');
  }

  word(word, ids) {
    const chars = Array.from(word);
    if (chars.length > MAX_WORD_CHARS) {
      ids.push(this.unk);
      return;
    }
    const pieces = [];
    let start = 0;
    while (start < chars.length) {
      let end = chars.length;
      let found;
      while (start < end) {
        const piece = (start === 0 ? '' : '##') + chars.slice(start, end).join('');
        found = this.vocab.get(piece);
        if (found !== undefined) break;
        end -= 1;
      }
      if (found === undefined) {
        ids.push(this.unk);
        return;
      }
      pieces.push(found);
      start = end;
    }
    ids.push(...pieces);
  }

  /** The ids of `text` framed by [CLS] and [SEP], cut to the model's 128 tokens. */
  encode(text) {
    const ids = [];
    // Special tokens are matched in the text as sent, before it is
    // normalized, and are never split.
    text.split(SPECIAL).forEach((part, index) => {
      if (index % 2 === 1) ids.push(this.vocab.get(part));
      else if (part) for (const word of preTokenize(normalize(part))) this.word(word, ids);
    });
    return [this.cls, ...ids.slice(0, MAX_TOKENS - 2), this.sep];
  }
}
