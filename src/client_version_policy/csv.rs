//! The CSV that PowerShell's `Export-Csv` writes: an optional `#TYPE ...`
//! line (Windows PowerShell writes one unless `-NoTypeInformation`), a
//! header row, then one row per object; every field in double quotes
//! (a `"` inside doubled), fields separated by `,` (or the `-Delimiter` /
//! `-UseCulture` character, found from the header row), rows ended by CRLF
//! or LF. A quoted field may hold line breaks. Unquoted fields are read as
//! they are.

/// One row: the line it starts on (1-based) and its fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Row {
    pub(super) line: usize,
    pub(super) fields: Vec<String>,
}

/// Why the text is not CSV.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct CsvError {
    /// 1-based line where the problem starts.
    pub(super) line: usize,
    pub(super) message: String,
}

/// The delimiter of a header row: the first `,`, `;` or tab outside
/// quotes (`,` when the row has a single field).
pub(super) fn delimiter(header_line: &str) -> char {
    let mut quoted = false;
    for c in header_line.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' | ';' | '\t' if !quoted => return c,
            _ => {}
        }
    }
    ','
}

/// Splits `text` into rows (blank lines skipped). `first_line` is the
/// line number of `text`'s first line in the file.
pub(super) fn rows(text: &str, delimiter: char, first_line: usize) -> Result<Vec<Row>, CsvError> {
    let mut rows = Vec::new();
    let mut chars = text.chars().peekable();
    let mut line = first_line;
    while chars.peek().is_some() {
        let start = line;
        let mut fields = Vec::new();
        let mut field = String::new();
        let mut quoted = false;
        let mut was_quoted = false;
        loop {
            let Some(c) = chars.next() else {
                if quoted {
                    return Err(CsvError {
                        line: start,
                        message: "a quoted field is not closed before the end of the file".into(),
                    });
                }
                break;
            };
            if c == '\n' {
                line += 1;
            }
            match c {
                '"' if quoted && chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' if quoted => quoted = false,
                '"' if field.is_empty() && !was_quoted => {
                    quoted = true;
                    was_quoted = true;
                }
                c if quoted => field.push(c),
                c if c == delimiter => {
                    fields.push(std::mem::take(&mut field));
                    was_quoted = false;
                }
                '\r' if chars.peek() == Some(&'\n') => {}
                '\n' => break,
                c => field.push(c),
            }
        }
        fields.push(field);
        let blank = fields.len() == 1 && fields[0].is_empty() && !was_quoted;
        if !blank {
            rows.push(Row {
                line: start,
                fields,
            });
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(rows: &[Row]) -> Vec<Vec<&str>> {
        rows.iter()
            .map(|r| r.fields.iter().map(String::as_str).collect())
            .collect()
    }

    #[test]
    fn quoted_fields_with_doubled_quotes_delimiters_and_line_breaks() {
        let text = "\"Priority\",\"Description\"\r\n\"0\",\"say \"\"hi\"\", then\r\nbye\"\r\n\r\n\"1\",\"\"\r\n";
        let rows = rows(text, ',', 2).unwrap();
        assert_eq!(
            fields(&rows),
            [
                vec!["Priority", "Description"],
                vec!["0", "say \"hi\", then\r\nbye"],
                vec!["1", ""],
            ]
        );
        assert_eq!(rows.iter().map(|r| r.line).collect::<Vec<_>>(), [2, 3, 6]);
    }

    #[test]
    fn unquoted_fields_and_other_delimiters() {
        assert_eq!(delimiter("\"Priority\";\"UserAgent\""), ';');
        assert_eq!(delimiter("\"A,B\"\t\"C\""), '\t');
        assert_eq!(delimiter("Priority"), ',');
        let rows = rows("Priority;UserAgent\n0;OC\n", ';', 1).unwrap();
        assert_eq!(
            fields(&rows),
            [vec!["Priority", "UserAgent"], vec!["0", "OC"]]
        );
    }

    #[test]
    fn an_unclosed_quote_is_named_with_its_line() {
        let err = rows("\"a\"\n\"b,c\n", ',', 1).unwrap_err();
        assert_eq!(err.line, 2);
        assert!(err.message.contains("not closed"), "{err:?}");
    }
}
