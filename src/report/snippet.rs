//! Ready-to-paste `[[clients]]` catalog entries for User-Agents the catalog
//! did not recognise (schema: `config/clients.toml`).
//!
//! The entry matches the User-Agent's first product token (`token = "Foo"`
//! for `Foo/1.2 (bar)`; the token's version is then reported as the
//! client's version), or, when the value has no usable product token, the
//! whole value (`regex = "^...$"`). Category and support are a guess
//! (`third-party`, no roles) for the admin to review. Appended at the end
//! of a catalog, the entry changes no earlier decision: rules are tried in
//! order, and no earlier rule matched these User-Agents.

use crate::sip::fields::is_token_char;
use crate::terminal_text::{is_bidi_control, terminal_safe};
use std::fmt::Write as _;

use crate::classify::{tokenize, Item, CLIENT_MISSING, CLIENT_UNKNOWN};

use super::summary::Millis;

/// Longest id a snippet proposes (bytes).
const MAX_ID_BYTES: usize = 40;
/// Longest display name a snippet proposes (characters).
const MAX_NAME_CHARS: usize = 60;

/// How a snippet recognises its User-Agent: what two User-Agents share
/// when one entry serves both.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum MatchRule {
    /// The product token, lowercased (tokens compare case-insensitively).
    Token(String),
    /// The whole (trimmed) value.
    Whole(String),
}

/// The rule a snippet for `user_agent` uses.
pub fn match_rule(user_agent: &str) -> MatchRule {
    let value = user_agent.trim();
    let first_product = tokenize(value.as_bytes()).find_map(|item| match item {
        Item::Product { name, .. } => std::str::from_utf8(name).ok(),
        Item::Comment(_) => None,
    });
    match first_product {
        Some(name) if usable_token(name) => MatchRule::Token(name.to_ascii_lowercase()),
        _ => MatchRule::Whole(value.to_owned()),
    }
}

/// A product name that makes a plain (not prefix) token condition naming
/// this client alone: an RFC 3261 token (no `*`, which the catalog takes
/// for a prefix) with a letter or digit. One such as `<` (from
/// `<script>...`) would match every User-Agent that starts the same way:
/// those get a whole-value rule.
fn usable_token(name: &str) -> bool {
    name.bytes().any(|b| b.is_ascii_alphanumeric())
        && name.bytes().all(|b| is_token_char(b) && b != b'*')
}

/// A proposed catalog entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogSnippet {
    /// The client id it proposes.
    pub id: String,
    /// The `[[clients]]` entry, TOML, with comments.
    pub toml: String,
}

/// The unknown User-Agents one snippet recognises (those sharing its
/// [`MatchRule`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Covered {
    /// Records with those User-Agents.
    pub records: u64,
    /// Distinct User-Agents.
    pub user_agents: u64,
    /// Earliest of those records.
    pub first: Millis,
    /// Latest of those records.
    pub last: Millis,
}

/// The TOML entry for `user_agent` (and the other unknown User-Agents it
/// recognises, `covered`), with an id for which `id_taken` is false.
pub fn catalog_snippet(
    user_agent: &str,
    covered: Covered,
    id_taken: impl Fn(&str) -> bool,
) -> CatalogSnippet {
    let value = user_agent.trim();
    let rule = match_rule(user_agent);
    let (base, name) = match &rule {
        MatchRule::Token(_) => {
            let token = first_token(value);
            (token.to_owned(), token.to_owned())
        }
        // A name is one line of text (it goes into the Warning of a
        // reject): control characters shown escaped, as report shows them.
        MatchRule::Whole(_) => (
            value.to_owned(),
            terminal_safe(value).chars().take(MAX_NAME_CHARS).collect(),
        ),
    };
    let id = free_id(&slug(&base), id_taken);
    let mut out = String::new();
    let Covered {
        records,
        user_agents,
        first,
        last,
    } = covered;
    // A comment is one line: the value's control characters shown escaped.
    let _ = writeln!(out, "# User-Agent: {}", quote(&terminal_safe(user_agent)));
    if user_agents > 1 {
        let _ = writeln!(
            out,
            "# and {} more with the same product: {user_agents} User-Agents, {records} records, {first} .. {last}",
            user_agents - 1
        );
    } else {
        let noun = if records == 1 { "record" } else { "records" };
        let _ = writeln!(out, "# {records} {noun}, {first} .. {last}");
    }
    out.push_str("# Review category, support and roles, then paste at the end of the catalog.\n");
    out.push_str("[[clients]]\n");
    let _ = writeln!(out, "id = {}", quote(&id));
    let _ = writeln!(out, "name = {}", quote(&name));
    out.push_str("category = \"third-party\"\nsupport = \"third-party\"\nroles = []\n");
    out.push_str("[[clients.match]]\n");
    match rule {
        MatchRule::Token(_) => {
            let _ = writeln!(out, "token = {}", quote(first_token(value)));
        }
        MatchRule::Whole(whole) => {
            let pattern = format!("^{}$", regex::escape(&whole));
            let _ = writeln!(out, "regex = {}", quote(&pattern));
        }
    }
    CatalogSnippet { id, toml: out }
}

/// The first product token's name (only called for [`MatchRule::Token`]).
fn first_token(value: &str) -> &str {
    tokenize(value.as_bytes())
        .find_map(|item| match item {
            Item::Product { name, .. } => std::str::from_utf8(name).ok(),
            Item::Comment(_) => None,
        })
        .unwrap_or(value)
}

/// A TOML basic string (escapes quotes, backslashes and control
/// characters, and bidirectional overrides, so that the snippet shows in a
/// terminal as it is).
fn quote(text: &str) -> String {
    let quoted = toml::Value::String(text.to_owned()).to_string();
    let mut out = String::with_capacity(quoted.len());
    for c in quoted.chars() {
        if is_bidi_control(c) {
            let _ = write!(out, "\\u{:04X}", c as u32);
        } else {
            out.push(c);
        }
    }
    out
}

/// An id the catalog accepts: lowercase letters, digits, `-`, `_`, `.`.
fn slug(text: &str) -> String {
    let mut id = String::new();
    for c in text.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_alphanumeric() || matches!(c, '_' | '.') {
            id.push(c);
        } else if !id.ends_with('-') {
            id.push('-');
        }
        if id.len() >= MAX_ID_BYTES {
            break;
        }
    }
    let id = id.trim_matches(|c| c == '-' || c == '.').to_owned();
    if id.is_empty() {
        "new-client".to_owned()
    } else {
        id
    }
}

/// `base`, or `base-2`, `base-3`, ... : the first that is neither reserved
/// nor taken.
fn free_id(base: &str, id_taken: impl Fn(&str) -> bool) -> String {
    let free = |id: &str| id != CLIENT_MISSING && id != CLIENT_UNKNOWN && !id_taken(id);
    if free(base) {
        return base.to_owned();
    }
    (2u32..)
        .map(|n| format!("{base}-{n}"))
        .find(|id| free(id))
        .unwrap_or_else(|| base.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::Catalog;
    use crate::config::SHIPPED_CATALOG;

    fn millis(s: &str) -> Millis {
        Millis(s.parse().unwrap())
    }

    fn covered(records: u64, user_agents: u64) -> Covered {
        Covered {
            records,
            user_agents,
            first: millis("2026-11-27T00:00:00Z"),
            last: millis("2026-11-28T00:00:00Z"),
        }
    }

    fn snippet(ua: &str, taken: &[&str]) -> String {
        let s = catalog_snippet(ua, covered(7, 1), |id| taken.contains(&id));
        assert!(s.toml.contains(&format!("id = \"{}\"", s.id)));
        s.toml
    }

    /// Appended to the shipped catalog, the snippet is valid and makes the
    /// User-Agent its own client (with the token's version).
    #[test]
    fn snippets_extend_the_shipped_catalog() {
        let shipped = Catalog::from_toml_str(SHIPPED_CATALOG).unwrap();
        let taken = |id: &str| shipped.client(id).is_some();
        for (ua, id, version) in [
            ("Acme-Phone/2.1.7 (build 4)", "acme-phone", Some("2.1.7")),
            ("Zorblax", "zorblax", None),
            ("(only a comment)", "only-a-comment", None),
            ("Odd \"quoted\" \\ UA/1 é", "odd", None),
            ("Star*Phone/3", "star-phone-3", None),
            ("  Spaced/1.0  ", "spaced", Some("1.0")),
            ("Bidi\u{202e}Phone/2", "bidi-phone-2", None),
            ("<script>alert(1)</script>", "script-alert-1-script", None),
            (
                "</style><svg onload=alert(3)>",
                "style-svg-onload-alert-3",
                None,
            ),
        ] {
            let s = catalog_snippet(ua, covered(3, 2), taken).toml;
            assert_eq!(
                shipped.classify(Some(ua.as_bytes())).client.id,
                "unknown",
                "{ua}"
            );
            let alone = Catalog::from_toml_str(&s).unwrap_or_else(|e| panic!("{s}\n{e}"));
            assert_eq!(alone.products().count(), 1);
            let both = Catalog::from_toml_str(&format!("{SHIPPED_CATALOG}\n{s}"))
                .unwrap_or_else(|e| panic!("{s}\n{e}"));
            let c = both.classify(Some(ua.as_bytes()));
            assert_ne!(c.client.id, "unknown", "{ua}\n{s}");
            assert_eq!(c.client.id, id, "{s}");
            assert_eq!(c.version.map(|v| v.to_string()).as_deref(), version, "{s}");
        }
    }

    /// A value with line breaks (a log altered or written by another tool:
    /// the proxy unfolds headers) stays inside its comment line.
    #[test]
    fn a_user_agent_with_line_breaks_stays_in_its_comment() {
        let ua = "Evil'''/1 \"x\" \n[[clients]]\nid=\"pwn\"";
        let s = catalog_snippet(ua, covered(1, 1), |_| false).toml;
        // The entry's own header, and the one in the comment line.
        assert_eq!(s.matches("[[clients]]").count(), 2, "{s}");
        assert!(
            s.lines()
                .any(|l| l.starts_with("# User-Agent: ") && l.contains("\\u{a}[[clients]]")),
            "{s}"
        );
        let alone = Catalog::from_toml_str(&s).unwrap_or_else(|e| panic!("{s}\n{e}"));
        assert_eq!(alone.products().count(), 1);
    }

    #[test]
    fn ids_avoid_reserved_and_taken_ones() {
        assert!(snippet("Unknown/1", &[]).contains("id = \"unknown-2\""));
        assert!(snippet("Acme/1", &["acme", "acme-2"]).contains("id = \"acme-3\""));
        assert!(snippet("Acme/1", &[]).contains("id = \"acme\""));
    }

    #[test]
    fn user_agents_with_the_same_first_token_share_a_rule() {
        assert_eq!(match_rule("Acme/1.0"), match_rule("ACME/2.0 (x)"));
        assert_ne!(match_rule("Acme/1.0"), match_rule("Other/1.0"));
        assert_eq!(match_rule("(x)"), MatchRule::Whole("(x)".into()));
    }
}
