//! User-Agent / Server value tokenizer (RFC 3261 `server-val`).
//!
//! ```text
//! User-Agent  =  "User-Agent" HCOLON server-val *(LWS server-val)
//! server-val  =  product / comment
//! product     =  token [SLASH product-version]
//! comment     =  LPAREN *(ctext / quoted-pair / comment) RPAREN
//! ```
//!
//! Works on raw bytes (header values may be non-UTF-8), borrows from the
//! input, never allocates and never panics. It is lenient on purpose: real
//! User-Agents contain characters outside RFC 3261 `token` (`,`, `:`, UTF-8),
//! so a product name is any run of bytes up to LWS, `/`, `(` or `)`. An
//! unterminated comment runs to the end of the value; a stray `)` or `/` is
//! skipped.

pub(crate) use crate::sip::fields::{is_lws, trim_lws};

/// One element of a `server-val` list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Item<'a> {
    /// A `product[/version]` token.
    Product {
        /// The product name, e.g. `OC` (never empty).
        name: &'a [u8],
        /// The version text after `/`, e.g. `15.0.4420.1017`; `None` if
        /// there is no `/` or nothing follows it.
        version: Option<&'a [u8]>,
    },
    /// A comment: the bytes between the outer parentheses, raw (nested
    /// comments and quoted-pairs such as `\)` are kept as written).
    Comment(&'a [u8]),
}

/// Iterator over the [`Item`]s of a User-Agent value; see [`tokenize`].
#[derive(Debug, Clone)]
pub struct Tokens<'a> {
    rest: &'a [u8],
}

/// Splits a User-Agent (or Server) header value into products and comments.
pub fn tokenize(value: &[u8]) -> Tokens<'_> {
    Tokens { rest: value }
}

fn skip_lws(value: &[u8]) -> &[u8] {
    let n = value.iter().take_while(|&&b| is_lws(b)).count();
    &value[n..]
}

/// Length of the run of bytes that are not LWS and not in `stops`.
fn run_len(value: &[u8], stops: &[u8]) -> usize {
    value
        .iter()
        .take_while(|&&b| !is_lws(b) && !stops.contains(&b))
        .count()
}

/// Splits `(...)` at the start of `value` into (inner, rest). `value[0]` is `(`.
fn split_comment(value: &[u8]) -> (&[u8], &[u8]) {
    let mut depth = 0usize;
    let mut i = 0;
    while i < value.len() {
        match value[i] {
            b'\\' => i += 1, // quoted-pair: the next byte is literal
            b'(' => depth += 1,
            b')' => {
                depth -= 1;
                if depth == 0 {
                    return (&value[1..i], &value[i + 1..]);
                }
            }
            _ => {}
        }
        i += 1;
    }
    // Unterminated: the comment runs to the end of the value.
    (&value[1..], &[])
}

impl<'a> Iterator for Tokens<'a> {
    type Item = Item<'a>;

    fn next(&mut self) -> Option<Item<'a>> {
        loop {
            self.rest = skip_lws(self.rest);
            let first = *self.rest.first()?;
            match first {
                b'(' => {
                    let (inner, rest) = split_comment(self.rest);
                    self.rest = rest;
                    return Some(Item::Comment(inner));
                }
                b')' | b'/' => self.rest = &self.rest[1..],
                _ => {
                    let n = run_len(self.rest, b"/()");
                    let name = &self.rest[..n];
                    self.rest = &self.rest[n..];
                    // SLASH = SWS "/" SWS
                    let after = skip_lws(self.rest);
                    let mut version = None;
                    if let [b'/', tail @ ..] = after {
                        let tail = skip_lws(tail);
                        let n = run_len(tail, b"()");
                        version = (n > 0).then(|| &tail[..n]);
                        self.rest = &tail[n..];
                    }
                    return Some(Item::Product { name, version });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p<'a>(name: &'a str, version: Option<&'a str>) -> Item<'a> {
        Item::Product {
            name: name.as_bytes(),
            version: version.map(str::as_bytes),
        }
    }

    fn c(inner: &str) -> Item<'_> {
        Item::Comment(inner.as_bytes())
    }

    fn items(value: &[u8]) -> Vec<Item<'_>> {
        tokenize(value).collect()
    }

    #[test]
    fn lync_products_and_comment() {
        assert_eq!(
            items(b"UCCAPI/15.0.4420.1017 OC/15.0.4420.1017 (Microsoft Lync)"),
            [
                p("UCCAPI", Some("15.0.4420.1017")),
                p("OC", Some("15.0.4420.1017")),
                c("Microsoft Lync"),
            ]
        );
    }

    #[test]
    fn products_without_versions_and_sws_around_slash() {
        assert_eq!(
            items(b"RTCC/5.0.0.0 Response_Group_Service Announcement_Service"),
            [
                p("RTCC", Some("5.0.0.0")),
                p("Response_Group_Service", None),
                p("Announcement_Service", None),
            ]
        );
        assert_eq!(
            items(b"Foo / 1.0\tBar/"),
            [p("Foo", Some("1.0")), p("Bar", None)]
        );
    }

    #[test]
    fn nested_comments_and_quoted_pairs() {
        assert_eq!(
            items(b"CPE/4.0.7423.1 OCPhone/4.0.7423.1 (Microsoft Lync 2010 (Beta) Phone Edition)"),
            [
                p("CPE", Some("4.0.7423.1")),
                p("OCPhone", Some("4.0.7423.1")),
                c("Microsoft Lync 2010 (Beta) Phone Edition"),
            ]
        );
        assert_eq!(
            items(br"A/1 (esc \) still \( in (deep (deeper)) x) B/2"),
            [
                p("A", Some("1")),
                c(r"esc \) still \( in (deep (deeper)) x"),
                p("B", Some("2")),
            ]
        );
        // A comment directly after a token, without LWS.
        assert_eq!(items(b"X/1(c)Y"), [p("X", Some("1")), c("c"), p("Y", None)]);
    }

    #[test]
    fn empty_and_whitespace() {
        assert!(items(b"").is_empty());
        assert!(items(b" \t\r\n ").is_empty());
        assert_eq!(items(b"()"), [c("")]);
    }

    #[test]
    fn garbage_never_panics() {
        assert_eq!(items(b"(unterminated (nested"), [c("unterminated (nested")]);
        assert_eq!(items(b"(trailing escape \\"), [c("trailing escape \\")]);
        assert_eq!(items(b")) // x"), [p("x", None)]);
        assert_eq!(
            items(b"\xff\xfe/\x00\x01 (\x80)"),
            [
                Item::Product {
                    name: b"\xff\xfe",
                    version: Some(b"\x00\x01"),
                },
                Item::Comment(b"\x80"),
            ]
        );
        // Every byte string of length <= 3 over an alphabet of special bytes.
        let alphabet = b"(/)\\ a\xff";
        let mut buf = Vec::new();
        for a in alphabet {
            for b in alphabet {
                for d in alphabet {
                    buf.clear();
                    buf.extend_from_slice(&[*a, *b, *d]);
                    for item in tokenize(&buf) {
                        if let Item::Product { name, .. } = item {
                            assert!(!name.is_empty());
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn trims_lws() {
        assert_eq!(trim_lws(b"  a b \r\n"), b"a b");
        assert_eq!(trim_lws(b" \t "), b"");
        assert_eq!(trim_lws(b""), b"");
    }
}
