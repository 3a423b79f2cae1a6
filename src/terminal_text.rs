//! Text from the outside world made fit for a terminal: the control
//! characters (NUL, ESC, BEL, CR, ...) and bidirectional overrides a peer
//! or a log line can carry, shown escaped as `\u{1b}` instead of acted on.
//! Used by `sipadmit probe`, `sipadmit report` and `sipadmit classify`; and
//! text made one line ([`one_line`]). Imports nothing of the crate.

use std::borrow::Cow;
use std::fmt::Write as _;

/// Characters that reorder how a terminal shows the text around them.
pub fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Whether `c` is shown escaped ([`terminal_safe`]).
fn is_escaped(c: char) -> bool {
    c.is_control() || is_bidi_control(c)
}

/// `text` with every control character and bidirectional override shown
/// escaped as `\u{1b}`; borrowed when there is none.
pub fn terminal_safe(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_escaped) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if is_escaped(c) {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// `text` on one line: each control character (line breaks included) as a
/// space; borrowed when there is none. For names that go into a header
/// value or a comment line, where a line break would start another.
pub fn one_line(text: &str) -> Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(
        text.chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_and_bidi_overrides_are_escaped_the_rest_kept() {
        assert!(matches!(terminal_safe("déjà vu — ok"), Cow::Borrowed(_)));
        assert_eq!(
            terminal_safe("a\0b\x1b[31mc\x07\td\r\ne\u{202e}f\u{7f}"),
            "a\\u{0}b\\u{1b}[31mc\\u{7}\\u{9}d\\u{d}\\u{a}e\\u{202e}f\\u{7f}"
        );
    }
}
