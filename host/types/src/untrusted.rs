//! Text that a guest or a bundle controls (its output, trap messages that
//! quote its own function names, error variants, import names, file names),
//! made safe to write to the node's log or an operator's terminal: every
//! character that could end a line, move the cursor or reorder what is
//! shown is written as an escape instead.

use std::borrow::Cow;
use std::fmt;

/// `text` with line breaks, control characters, bidirectional and other
/// invisible format characters escaped (`\n`, `\u{1b}`, `\u{202e}`), so
/// that it shows as one line that says what it holds. Tabs stay.
pub fn escaped(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut shown = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '\n' => shown.push_str("\\n"),
            '\r' => shown.push_str("\\r"),
            c if needs_escape(c) => shown.push_str(&format!("\\u{{{:x}}}", u32::from(c))),
            c => shown.push(c),
        }
    }
    Cow::Owned(shown)
}

/// As [`escaped`], but line breaks stay: for text that is meant to span
/// lines on a terminal, such as a parser's report that quotes the line at
/// fault.
pub fn escaped_keeping_lines(text: &str) -> Cow<'_, str> {
    if !text.chars().any(|c| c != '\n' && needs_escape(c)) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(text.split('\n').map(escaped).collect::<Vec<_>>().join("\n"))
}

/// Most bytes of an [`Untrusted`] text kept: a trap's backtrace can quote
/// function names of any length, and one log line per request should not
/// be megabytes.
pub const MAX_UNTRUSTED_BYTES: usize = 16 << 10;

/// Text from a guest or a bundle, cut at [`MAX_UNTRUSTED_BYTES`] and
/// otherwise kept as it came. It shows escaped (see [`escaped`]) through
/// both `Display` and `Debug`, so it cannot reach a log line or a terminal
/// any other way; [`Untrusted::raw`] gives the text itself, for places that
/// encode it (a JSON body).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Untrusted(String);

impl Untrusted {
    pub fn new(text: impl Into<String>) -> Self {
        let mut text = text.into();
        if text.len() > MAX_UNTRUSTED_BYTES {
            let mut cut = MAX_UNTRUSTED_BYTES;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            let rest = text.len() - cut;
            text.truncate(cut);
            text.push_str(&format!(" [{rest} more bytes not shown]"));
        }
        Untrusted(text)
    }

    /// The text as it came.
    pub fn raw(&self) -> &str {
        &self.0
    }

    pub fn contains(&self, pattern: &str) -> bool {
        self.0.contains(pattern)
    }
}

impl fmt::Display for Untrusted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&escaped(&self.0))
    }
}

impl fmt::Debug for Untrusted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}\"", escaped(&self.0))
    }
}

fn needs_escape(c: char) -> bool {
    (c.is_control() && c != '\t') || is_line_separator(c) || is_format(c)
}

fn is_line_separator(c: char) -> bool {
    matches!(c, '\u{2028}' | '\u{2029}')
}

/// Unicode's format characters (general category Cf): invisible, and some
/// reorder the text around them (the bidirectional overrides and isolates)
/// or hide it (zero-width characters, tags).
fn is_format(c: char) -> bool {
    matches!(
        c,
        '\u{ad}'
            | '\u{600}'..='\u{605}'
            | '\u{61c}'
            | '\u{6dd}'
            | '\u{70f}'
            | '\u{890}'..='\u{891}'
            | '\u{8e2}'
            | '\u{180e}'
            | '\u{200b}'..='\u{200f}'
            | '\u{202a}'..='\u{202e}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{206f}'
            | '\u{feff}'
            | '\u{fff9}'..='\u{fffb}'
            | '\u{110bd}'
            | '\u{110cd}'
            | '\u{13430}'..='\u{1343f}'
            | '\u{1bca0}'..='\u{1bca3}'
            | '\u{1d173}'..='\u{1d17a}'
            | '\u{e0001}'
            | '\u{e0020}'..='\u{e007f}'
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_breaks_and_escape_sequences_show_as_escapes() {
        let forged = "boom\n2026-12-01T00:00:00Z  INFO mantle: all good\r\u{1b}[2K\u{85}";
        assert_eq!(escaped(forged), "boom\\n2026-12-01T00:00:00Z  INFO mantle: all good\\r\\u{1b}[2K\\u{85}");
        assert_eq!(escaped("a\u{2028}b\u{2029}c"), "a\\u{2028}b\\u{2029}c");
    }

    #[test]
    fn invisible_reordering_characters_show_as_escapes() {
        assert_eq!(escaped("user\u{202e}gnp.exe"), "user\\u{202e}gnp.exe");
        assert_eq!(escaped("a\u{200b}b\u{2066}c\u{feff}"), "a\\u{200b}b\\u{2066}c\\u{feff}");
        assert_eq!(escaped("tag\u{e0041}"), "tag\\u{e0041}");
    }

    #[test]
    fn ordinary_text_is_borrowed_as_it_is() {
        for text in ["plain text", "tabs\tstay", "ünïcödé, 日本語, emoji 🦀", ""] {
            assert!(matches!(escaped(text), Cow::Borrowed(t) if t == text), "{text:?}");
        }
    }

    #[test]
    fn keeping_lines_escapes_everything_else() {
        assert_eq!(escaped_keeping_lines("line 1\nline\u{1b}[31m 2\r"), "line 1\nline\\u{1b}[31m 2\\r");
    }

    #[test]
    fn untrusted_text_is_cut_at_its_limit_on_a_character_boundary() {
        let long = format!("x{}", "é".repeat(MAX_UNTRUSTED_BYTES));
        let kept = Untrusted::new(long.clone());
        // `x` then two-byte characters: the limit falls inside one.
        let (shown, note) = kept.raw().split_at(MAX_UNTRUSTED_BYTES - 1);
        assert!(long.starts_with(shown));
        assert_eq!(note, format!(" [{} more bytes not shown]", long.len() - shown.len()));
    }

    #[test]
    fn untrusted_text_shows_escaped_both_ways_and_keeps_its_bytes() {
        let text = Untrusted::new("trap in `evil\nINFO fake`");
        assert_eq!(text.to_string(), "trap in `evil\\nINFO fake`");
        assert_eq!(format!("{text:?}"), "\"trap in `evil\\nINFO fake`\"");
        assert_eq!(text.raw(), "trap in `evil\nINFO fake`");
    }
}
