//! Reading an export of `Get-CsClientVersionPolicyRule` into
//! [`PolicyRule`]s.
//!
//! Accepted, told apart by their first character:
//!
//! - JSON (`ConvertTo-Json`): an array of rule objects, one object (a
//!   single rule), or `{"value": [...], "Count": n}` (what
//!   `ConvertTo-Json -InputObject $rules` writes in Windows PowerShell).
//! - CSV (`Export-Csv`): see [`super::csv`].
//!
//! Text may be UTF-8 (with or without BOM) or UTF-16 with a BOM (what
//! Windows PowerShell's `Out-File` and `>` write). UTF-16 without a BOM is
//! refused as such (not guessed), and a byte that is not UTF-8 (a cp1252
//! export) is named with the record and field that hold it. Property names compare
//! case-insensitively, as in PowerShell. Read: `Priority`, `UserAgent`,
//! `MajorVersion`, `MinorVersion`, `BuildNumber`, `QfeNumber`, `CompareOp`
//! and `Action` (required), `Enabled` (default true), `Identity`,
//! `UserAgentFullName`, `ActionUrl` and `Description` (optional); other
//! properties (`RuleId`, `Element`, ...) are ignored. A property read that
//! a rule gives twice (a JSON key repeated, or written in two cases; a CSV
//! column repeated) is refused, naming every copy: no export has one (the
//! file was edited or merged), which copy is meant is unknown, and picking
//! one silently could turn a `Block` into an `Allow`. A version part may be
//! a wildcard: null, empty or `*`. `CompareOp` and `Action` must be names
//! (`GEQ`, `BlockWithUrl`): Windows PowerShell's `ConvertTo-Json` writes
//! enumerations as numbers, whose meaning sipadmit does not guess.

mod json;

use serde_json::Value;

use self::json::{lookup, Json, Lookup};
use super::csv;
use super::{PolicyAction, PolicyRule, VersionPattern};
use crate::classify::CompareOp;
use crate::problem::Problem;

/// Why an export could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// UTF-16 (it starts with a byte order mark) that does not decode.
    #[error("UTF-16 text (it starts with a byte order mark) that does not decode: {detail}")]
    Encoding {
        /// What failed.
        detail: String,
    },
    /// UTF-16 without a byte order mark: NUL bytes in every other position.
    #[error("UTF-16 without a byte order mark: save as UTF-8 or UTF-16 with BOM")]
    Utf16WithoutBom,
    /// A byte that is not UTF-8 (an export in a Windows code page such as
    /// cp1252), located like every other problem.
    #[error(
        "{place}: invalid UTF-8: byte 0x{byte:02X} (file offset {offset}); save the export as \
         UTF-8 or UTF-16 with BOM (a Windows code page such as cp1252 is not read)"
    )]
    InvalidUtf8 {
        /// `line 7, Description` (CSV), `line 7, column 12` (JSON), or
        /// `line 2 (the header row)`.
        place: String,
        /// The first byte that is not UTF-8.
        byte: u8,
        /// Its offset in the file (0-based, byte order mark included).
        offset: usize,
    },
    /// Starts like JSON but is not valid JSON.
    #[error("not valid JSON: line {line}, column {column}: {message}")]
    Json {
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What serde_json reported.
        message: String,
    },
    /// JSON of another shape than the rule export.
    #[error("{0}")]
    Shape(String),
    /// Not CSV as `Export-Csv` writes it.
    #[error("CSV line {line}: {message}")]
    Csv {
        /// 1-based line.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// No rule in the file.
    #[error("no rule in the export")]
    Empty,
    /// Rules with missing or invalid fields; every one is listed.
    #[error("{} problem(s) in the rules:{}", problems.len(), problems.iter().map(|p| format!("\n  {p}")).collect::<String>())]
    Invalid {
        /// Each problem, keyed by record and field (`[2].CompareOp`,
        /// `line 4, Action`).
        problems: Vec<Problem>,
    },
}

/// The fields every rule must have (a version part may be a wildcard).
const REQUIRED: [&str; 8] = [
    "Priority",
    "UserAgent",
    "MajorVersion",
    "MinorVersion",
    "BuildNumber",
    "QfeNumber",
    "CompareOp",
    "Action",
];

/// The fields a rule may have besides [`REQUIRED`].
const OPTIONAL: [&str; 5] = [
    "Enabled",
    "Identity",
    "UserAgentFullName",
    "ActionUrl",
    "Description",
];

/// Reads every rule of an export (JSON or CSV, see the module docs).
pub fn read_rules(bytes: &[u8]) -> Result<Vec<PolicyRule>, ReadError> {
    let (text, invalid) = decode(bytes)?;
    let trimmed = text.trim_start();
    let json = trimmed.starts_with('[') || trimmed.starts_with('{');
    if let Some(invalid) = invalid {
        return Err(locate_invalid_utf8(&text, json, invalid));
    }
    let rules = if json {
        read_json(&text)?
    } else {
        read_csv(&text)?
    };
    if rules.is_empty() {
        return Err(ReadError::Empty);
    }
    Ok(rules)
}

/// The first byte of a UTF-8 text that is not UTF-8.
#[derive(Debug, Clone, Copy)]
struct InvalidByte {
    /// Its offset in the decoded text (the BOM skipped), where the lossy
    /// decoding put a U+FFFD.
    at: usize,
    /// Its offset in the file.
    offset: usize,
    byte: u8,
}

/// UTF-8 (a BOM skipped) or UTF-16 LE/BE with a BOM, as text. Text that is
/// not UTF-8 comes back decoded lossily, with its first bad byte, so that
/// the caller can name the record and field that hold it.
fn decode(bytes: &[u8]) -> Result<(String, Option<InvalidByte>), ReadError> {
    let utf16 = |rest: &[u8], from: fn([u8; 2]) -> u16| {
        if rest.len() % 2 != 0 {
            return Err(ReadError::Encoding {
                detail: format!("an odd number of bytes ({})", bytes.len()),
            });
        }
        let units = rest.chunks_exact(2).map(|c| from([c[0], c[1]]));
        let mut text = String::with_capacity(rest.len() / 2);
        let mut offset = 2;
        for decoded in char::decode_utf16(units) {
            match decoded {
                Ok(c) => {
                    text.push(c);
                    offset += 2 * c.len_utf16();
                }
                Err(e) => {
                    return Err(ReadError::Encoding {
                        detail: format!(
                            "a lone surrogate 0x{:04X} at byte offset {offset}: save the \
                             export again as UTF-8",
                            e.unpaired_surrogate()
                        ),
                    })
                }
            }
        }
        Ok((text, None))
    };
    match bytes {
        [0xFF, 0xFE, rest @ ..] => utf16(rest, u16::from_le_bytes),
        [0xFE, 0xFF, rest @ ..] => utf16(rest, u16::from_be_bytes),
        _ if utf16_without_bom(bytes) => Err(ReadError::Utf16WithoutBom),
        _ => {
            let rest = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
            match std::str::from_utf8(rest) {
                Ok(text) => Ok((text.to_owned(), None)),
                Err(e) => {
                    let at = e.valid_up_to();
                    let invalid = InvalidByte {
                        at,
                        offset: at + (bytes.len() - rest.len()),
                        byte: rest[at],
                    };
                    Ok((String::from_utf8_lossy(rest).into_owned(), Some(invalid)))
                }
            }
        }
    }
}

/// Whether `bytes` look like UTF-16 without a byte order mark: within the
/// first 256 bytes, a NUL in every odd position (little-endian) or every
/// even one (big-endian), and not in the others. An export is text: UTF-8
/// text holds no NUL, let alone every other byte.
fn utf16_without_bom(bytes: &[u8]) -> bool {
    let head = &bytes[..bytes.len().min(256) & !1];
    if head.len() < 4 {
        return false;
    }
    let nul_at = |parity: usize| head.iter().skip(parity).step_by(2).all(|&b| b == 0);
    let some_text_at = |parity: usize| head.iter().skip(parity).step_by(2).any(|&b| b != 0);
    (nul_at(1) && some_text_at(0)) || (nul_at(0) && some_text_at(1))
}

/// Where the first byte that is not UTF-8 is: the CSV record and field
/// that hold it, else its line and column.
fn locate_invalid_utf8(text: &str, json: bool, invalid: InvalidByte) -> ReadError {
    // The lossy text is the file up to the bad byte, then a U+FFFD for it:
    // it is the (n+1)-th U+FFFD of the text when n come before it.
    let before = text[..invalid.at].matches('\u{FFFD}').count();
    let in_csv = (!json)
        .then(|| csv_table(text).ok())
        .flatten()
        .and_then(|(header, rows)| {
            let mut seen = 0;
            std::iter::once(&header).chain(&rows).find_map(|row| {
                row.fields.iter().enumerate().find_map(|(i, field)| {
                    seen += field.matches('\u{FFFD}').count();
                    (seen > before).then(|| {
                        if row.line == header.line {
                            format!("line {} (the header row)", row.line)
                        } else if let Some(name) = header.fields.get(i) {
                            format!("line {}, {name}", row.line)
                        } else {
                            format!("line {}", row.line)
                        }
                    })
                })
            })
        });
    let place = in_csv.unwrap_or_else(|| {
        let prefix = &text[..invalid.at];
        let line_start = prefix.rfind('\n').map_or(0, |i| i + 1);
        format!(
            "line {}, column {}",
            prefix.matches('\n').count() + 1,
            prefix[line_start..].chars().count() + 1
        )
    });
    ReadError::InvalidUtf8 {
        place,
        byte: invalid.byte,
        offset: invalid.offset,
    }
}

// === JSON ===

fn read_json(text: &str) -> Result<Vec<PolicyRule>, ReadError> {
    let value: Json = serde_json::from_str(text).map_err(|e| ReadError::Json {
        line: e.line(),
        column: e.column(),
        message: e.to_string(),
    })?;
    let items: Vec<&Json> = match &value {
        Json::Array(items) => items.iter().collect(),
        Json::Object(members) if lookup(members, "UserAgent").is_absent() => {
            match lookup(members, "value") {
                Lookup::Once(Json::Array(items)) => items.iter().collect(),
                Lookup::Repeated(copies) => {
                    return Err(ReadError::Shape(format!(
                        "the object has the property \"value\" {} ({}): which of them holds \
                         the rules is unknown; give it once",
                        times(copies.len()),
                        copies
                            .iter()
                            .map(|(k, v)| format!("{k:?}: {}", v.kind()))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )))
                }
                _ => vec![&value],
            }
        }
        Json::Object(_) => vec![&value],
        Json::Scalar(other) => {
            return Err(ReadError::Shape(format!(
            "expected an array of rule objects (Get-CsClientVersionPolicyRule | ConvertTo-Json), \
                 found {}",
            json_kind(other)
        )))
        }
    };
    let mut problems = Vec::new();
    let mut rules = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        let origin = format!("[{i}]");
        let Json::Object(members) = item else {
            problems.push(Problem::new(
                &origin,
                format!("expected a rule object, found {}", item.kind()),
            ));
            continue;
        };
        if !lookup(members, "Rules").is_absent() && lookup(members, "UserAgent").is_absent() {
            return Err(ReadError::Shape(format!(
                "{origin} is a client version policy (it has Rules), not a rule: export the rules \
                 with Get-CsClientVersionPolicyRule -Filter \"<scope>/*\" | ConvertTo-Json"
            )));
        }
        let members: Vec<(String, Value)> = members
            .iter()
            .map(|(k, v)| (k.clone(), v.to_value()))
            .collect();
        let field = |name: &str| match lookup(&members, name) {
            Lookup::Absent => Ok(None),
            Lookup::Once(v) => Ok(Some(Field::Json(v))),
            Lookup::Repeated(copies) => Err(format!(
                "given {} ({}): which value the rule has is unknown; give the property once",
                times(copies.len()),
                copies
                    .iter()
                    .map(|(k, v)| format!("{k:?}: {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        };
        if let Some(rule) = rule(&origin, &field, &mut problems) {
            rules.push(rule);
        }
    }
    finish(rules, problems)
}

/// `twice`, `3 times`.
fn times(n: usize) -> String {
    if n == 2 {
        "twice".to_owned()
    } else {
        format!("{n} times")
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

// === CSV ===

/// The header row and the records of a CSV export.
fn csv_table(text: &str) -> Result<(csv::Row, Vec<csv::Row>), ReadError> {
    // `#TYPE Microsoft.Rtc.Management...` (Windows PowerShell's default).
    let (body, first_line) = match text.trim_start_matches(['\r', '\n']).strip_prefix("#TYPE") {
        Some(rest) => {
            let skipped_blank = text.len() - text.trim_start_matches(['\r', '\n']).len();
            let newlines = text[..skipped_blank].matches('\n').count();
            match rest.split_once('\n') {
                Some((_, body)) => (body, newlines + 2),
                None => ("", newlines + 2),
            }
        }
        None => (text, 1),
    };
    let header_line = body
        .trim_start_matches(['\r', '\n'])
        .lines()
        .next()
        .unwrap_or("");
    let mut rows =
        csv::rows(body, csv::delimiter(header_line), first_line).map_err(|e| ReadError::Csv {
            line: e.line,
            message: e.message,
        })?;
    if rows.is_empty() {
        return Err(ReadError::Empty);
    }
    let header = rows.remove(0);
    Ok((header, rows))
}

fn read_csv(text: &str) -> Result<Vec<PolicyRule>, ReadError> {
    let (header, rows) = csv_table(text)?;
    let missing: Vec<&str> = REQUIRED
        .into_iter()
        .filter(|name| !header.fields.iter().any(|h| h.eq_ignore_ascii_case(name)))
        .collect();
    if !missing.is_empty() {
        return Err(ReadError::Csv {
            line: header.line,
            message: format!(
                "the header row has no column {} (found: {})",
                missing.join(", "),
                header.fields.join(", ")
            ),
        });
    }
    if let Some(message) = repeated_columns(&header.fields) {
        return Err(ReadError::Csv {
            line: header.line,
            message,
        });
    }
    let mut problems = Vec::new();
    let mut rules = Vec::new();
    for row in &rows {
        let origin = format!("line {}", row.line);
        if row.fields.len() != header.fields.len() {
            problems.push(Problem::new(
                &origin,
                format!(
                    "{} fields, the header row has {}",
                    row.fields.len(),
                    header.fields.len()
                ),
            ));
            continue;
        }
        let field = |name: &str| {
            header
                .fields
                .iter()
                .position(|h| h.eq_ignore_ascii_case(name))
                .map(|i| Field::Csv(&row.fields[i]))
        };
        let field = |name: &str| Ok::<_, String>(field(name));
        if let Some(rule) = rule(&origin, &field, &mut problems) {
            rules.push(rule);
        }
    }
    finish(rules, problems)
}

/// The columns of the header row that name a property read
/// ([`REQUIRED`], [`OPTIONAL`]) more than once, case-insensitively: which
/// of them holds a rule's value is unknown. Other columns may repeat (they
/// are ignored).
fn repeated_columns(header: &[String]) -> Option<String> {
    let repeated: Vec<String> = REQUIRED
        .iter()
        .chain(&OPTIONAL)
        .filter_map(|name| {
            let columns: Vec<String> = header
                .iter()
                .enumerate()
                .filter(|(_, h)| h.eq_ignore_ascii_case(name))
                .map(|(i, h)| format!("{} ({h:?})", i + 1))
                .collect();
            (columns.len() > 1).then(|| {
                format!(
                    "{name} {} (columns {})",
                    times(columns.len()),
                    columns.join(", ")
                )
            })
        })
        .collect();
    (!repeated.is_empty()).then(|| {
        format!(
            "the header row has the column {}: which of them holds a rule's value is unknown; \
             keep one",
            repeated.join(", the column ")
        )
    })
}

fn finish(rules: Vec<PolicyRule>, problems: Vec<Problem>) -> Result<Vec<PolicyRule>, ReadError> {
    if problems.is_empty() {
        Ok(rules)
    } else {
        Err(ReadError::Invalid { problems })
    }
}

// === one rule ===

/// One field's value as exported.
#[derive(Clone, Copy)]
enum Field<'a> {
    Json(&'a Value),
    Csv(&'a str),
}

/// Reads one rule; its problems go to `problems` (keyed `origin.Field`).
/// `field` gives a field's value by name, or why it has none to read (a
/// property given twice).
fn rule<'a>(
    origin: &str,
    field: &dyn Fn(&str) -> Result<Option<Field<'a>>, String>,
    problems: &mut Vec<Problem>,
) -> Option<PolicyRule> {
    let before = problems.len();
    let key = |name: &str| super::field_key(origin, name);
    let mut take =
        |name: &str, parse: &dyn Fn(Field<'a>) -> Result<Parsed, String>| match field(name) {
            Ok(None) if REQUIRED.contains(&name) => {
                problems.push(Problem::new(key(name), "missing"));
                None
            }
            Ok(None) => Some(Parsed::Absent),
            Ok(Some(value)) => parse(value)
                .map_err(|m| problems.push(Problem::new(key(name), m)))
                .ok(),
            Err(m) => {
                problems.push(Problem::new(key(name), m));
                None
            }
        };
    let priority = take("Priority", &|f| {
        integer(f, i64::from(i32::MIN), i64::from(i32::MAX))
    });
    let user_agent = take("UserAgent", &text_required);
    let parts = ["MajorVersion", "MinorVersion", "BuildNumber", "QfeNumber"]
        .map(|name| take(name, &version_part));
    let op = take("CompareOp", &|f| enum_name(f, "CompareOp"));
    let action = take("Action", &|f| enum_name(f, "Action"));
    let enabled = take("Enabled", &boolean);
    let [identity, full_name, action_url, description] =
        ["Identity", "UserAgentFullName", "ActionUrl", "Description"].map(|name| take(name, &text));
    if problems.len() != before {
        return None;
    }
    let op = op?.name()?;
    let action = action?.name()?;
    Some(PolicyRule {
        origin: origin.to_owned(),
        identity: identity?.text(),
        priority: i32::try_from(priority?.number()?).ok()?,
        user_agent: user_agent?.text()?,
        user_agent_full_name: full_name?.text(),
        version: VersionPattern {
            parts: parts.map(|p| {
                p.and_then(|p| p.number())
                    .and_then(|n| u16::try_from(n).ok())
            }),
        },
        op: CompareOp::from_name(&op)?,
        action: PolicyAction::from_name(&action)?,
        action_url: action_url?.text(),
        enabled: enabled?.flag().unwrap_or(true),
        description: description?.text(),
    })
}

/// A field read: its value, or absent / a wildcard.
enum Parsed {
    Absent,
    Number(i64),
    Text(String),
    Flag(bool),
}

impl Parsed {
    fn number(self) -> Option<i64> {
        match self {
            Self::Number(n) => Some(n),
            _ => None,
        }
    }
    fn text(self) -> Option<String> {
        match self {
            Self::Text(t) => Some(t),
            _ => None,
        }
    }
    fn name(self) -> Option<String> {
        self.text()
    }
    fn flag(self) -> Option<bool> {
        match self {
            Self::Flag(b) => Some(b),
            _ => None,
        }
    }
}

impl<'a> Field<'a> {
    /// The text of a JSON string or a CSV field.
    fn string(self) -> Option<&'a str> {
        match self {
            Self::Json(Value::String(s)) => Some(s),
            Self::Csv(s) => Some(s),
            Self::Json(_) => None,
        }
    }
}

/// A decimal integer in `min..=max` (JSON number or string, CSV text).
fn integer(field: Field<'_>, min: i64, max: i64) -> Result<Parsed, String> {
    let n = match (field, field.string().map(str::trim)) {
        (Field::Json(Value::Number(n)), _) => n.as_i64(),
        (_, Some(s)) if !s.is_empty() => s.parse::<i64>().ok(),
        (Field::Json(v), None) => {
            return Err(format!("expected an integer, found {}", json_kind(v)))
        }
        _ => return Err("expected an integer, found nothing".into()),
    };
    match n {
        Some(n) if (min..=max).contains(&n) => Ok(Parsed::Number(n)),
        _ => Err(format!(
            "expected an integer from {min} to {max}, found {}",
            shown(field)
        )),
    }
}

/// A version part: 0 to 65535 (UInt16), or a wildcard (null, empty, `*`).
fn version_part(field: Field<'_>) -> Result<Parsed, String> {
    match (field, field.string().map(str::trim)) {
        (Field::Json(Value::Null), _) | (_, Some("" | "*")) => Ok(Parsed::Absent),
        _ => integer(field, 0, i64::from(u16::MAX)),
    }
}

/// `CompareOp` or `Action` by name; a number is refused (see the module docs).
fn enum_name(field: Field<'_>, which: &str) -> Result<Parsed, String> {
    let names: Vec<&str> = if which == "Action" {
        PolicyAction::ALL.iter().map(|a| a.as_str()).collect()
    } else {
        CompareOp::ALL.iter().map(|o| o.as_str()).collect()
    };
    let text = match (field, field.string()) {
        (_, Some(s)) => s.trim(),
        (Field::Json(Value::Number(n)), _) => {
            return Err(format!(
                "the number {n}, not a name ({}): Windows PowerShell's ConvertTo-Json writes \
                 enumerations as numbers, and sipadmit does not guess their meaning; export with \
                 Export-Csv, or convert the names first (docs/client-version-policy.md)",
                names.join(", ")
            ))
        }
        _ => return Err(format!("expected a name, found {}", shown(field))),
    };
    let known = if which == "Action" {
        PolicyAction::from_name(text).is_some()
    } else {
        CompareOp::from_name(text).is_some()
    };
    if known {
        Ok(Parsed::Text(text.to_owned()))
    } else {
        Err(format!(
            "unknown {which} {text:?}: expected {}",
            names.join(", ")
        ))
    }
}

/// `Enabled`: a JSON boolean, or `True` / `False` (any case).
fn boolean(field: Field<'_>) -> Result<Parsed, String> {
    match (field, field.string().map(str::trim)) {
        (Field::Json(Value::Bool(b)), _) => Ok(Parsed::Flag(*b)),
        (_, Some(s)) if s.eq_ignore_ascii_case("true") => Ok(Parsed::Flag(true)),
        (_, Some(s)) if s.eq_ignore_ascii_case("false") => Ok(Parsed::Flag(false)),
        _ => Err(format!("expected True or False, found {}", shown(field))),
    }
}

/// A required non-empty string.
fn text_required(field: Field<'_>) -> Result<Parsed, String> {
    match field.string().map(str::trim) {
        Some(s) if !s.is_empty() => Ok(Parsed::Text(s.to_owned())),
        _ => Err(format!(
            "expected a product name such as \"OC\", found {}",
            shown(field)
        )),
    }
}

/// An optional string: empty, null or not a string (an `Identity` that
/// ConvertTo-Json wrote as an object) counts as absent.
fn text(field: Field<'_>) -> Result<Parsed, String> {
    Ok(match field.string().map(str::trim) {
        Some(s) if !s.is_empty() => Parsed::Text(s.to_owned()),
        _ => Parsed::Absent,
    })
}

/// A value as an error message shows it.
fn shown(field: Field<'_>) -> String {
    match (field, field.string()) {
        (_, Some(s)) => format!("{s:?}"),
        (Field::Json(v), None) => v.to_string(),
        (Field::Csv(s), None) => s.to_owned(),
    }
}

#[cfg(test)]
mod tests;
