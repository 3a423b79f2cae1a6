//! The plain report: aligned text tables for a terminal or an email (no
//! colours, no terminal control: control and bidirectional-override
//! characters from the log are shown escaped, `\u{1b}`).

use std::fmt::Write as _;

use super::summary::{KeyCount, NamedCounts, Summary};
use crate::terminal_text::terminal_safe;

/// Rows shown in a "top" table (sources, users, workflows, rules, clients
/// of would-be rejects): 10.
pub const TOP_ROWS: usize = 10;
/// Unknown User-Agents shown: 20.
pub const TOP_USER_AGENTS: usize = 20;
/// Characters of a User-Agent, URI or other value shown in a table cell: 100.
const MAX_CELL_CHARS: usize = 100;
/// Width of the bars of the over-time table.
const BAR_WIDTH: u64 = 40;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Align {
    Left,
    Right,
}

/// A text table: columns separated by two spaces, numbers right-aligned,
/// the last column unpadded.
struct Table {
    header: Vec<&'static str>,
    align: Vec<Align>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(columns: &[(&'static str, Align)]) -> Self {
        Self {
            header: columns.iter().map(|(h, _)| *h).collect(),
            align: columns.iter().map(|(_, a)| *a).collect(),
            rows: Vec::new(),
        }
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows
            .push(cells.into_iter().map(|c| cell(&c)).collect());
    }

    fn render(&self, out: &mut String) {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (w, c) in widths.iter_mut().zip(row) {
                *w = (*w).max(c.chars().count());
            }
        }
        let header: Vec<String> = self.header.iter().map(|h| (*h).to_owned()).collect();
        for row in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            let last = row.len().saturating_sub(1);
            for (i, c) in row.iter().enumerate() {
                let pad = widths[i].saturating_sub(c.chars().count());
                match (self.align[i], i == last) {
                    (Align::Right, _) => {
                        line.extend(std::iter::repeat_n(' ', pad));
                        line.push_str(c);
                    }
                    (Align::Left, true) => line.push_str(c),
                    (Align::Left, false) => {
                        line.push_str(c);
                        line.extend(std::iter::repeat_n(' ', pad));
                    }
                }
                if i != last {
                    line.push_str("  ");
                }
            }
            out.push_str("  ");
            out.push_str(line.trim_end());
            out.push('\n');
        }
    }
}

/// A value from the log made safe ([`terminal_safe`]) and short for a
/// terminal cell.
fn cell(text: &str) -> String {
    let shown: String = text.chars().take(MAX_CELL_CHARS).collect();
    let mut out = terminal_safe(&shown).into_owned();
    if text.chars().nth(MAX_CELL_CHARS).is_some() {
        out.push('…');
    }
    out
}

fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        return "-".to_owned();
    }
    format!("{:.1}%", part as f64 * 100.0 / whole as f64)
}

fn heading(out: &mut String, title: &str) {
    out.push('\n');
    out.push_str(title);
    out.push('\n');
    out.extend(std::iter::repeat_n('-', title.chars().count()));
    out.push('\n');
}

fn more(out: &mut String, shown: usize, total: usize, what: &str) {
    if total > shown {
        let _ = writeln!(out, "  ... and {} more {what} (see --json)", total - shown);
    }
}

fn top_table(out: &mut String, title: &'static str, rows: &[KeyCount], whole: u64) {
    let mut t = Table::new(&[
        ("RECORDS", Align::Right),
        ("SHARE", Align::Right),
        (title, Align::Left),
    ]);
    for r in rows.iter().take(TOP_ROWS) {
        t.row(vec![
            r.count.to_string(),
            percent(r.count, whole),
            r.key.clone(),
        ]);
    }
    if rows.is_empty() {
        let _ = writeln!(out, "  {title}: none");
        return;
    }
    t.render(out);
    more(out, TOP_ROWS, rows.len(), "rows");
}

fn counts_line(counts: &NamedCounts) -> String {
    counts
        .0
        .iter()
        .map(|(n, c)| format!("{n} {c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The whole plain report.
pub fn render(s: &Summary) -> String {
    let mut out = String::new();
    overview(&mut out, s);
    decisions(&mut out, s);
    clients(&mut out, s);
    would_reject(&mut out, s);
    rejected_and_flagged(&mut out, s);
    protocol_answers(&mut out, s);
    unknown_user_agents(&mut out, s);
    over_time(&mut out, s);
    not_itemised(&mut out, s);
    out
}

fn overview(out: &mut String, s: &Summary) {
    out.push_str("sipadmit decision report\n");
    out.push_str("========================\n");
    logs_read(out, s);
    counted(out, s);
}

/// The overview's lines on the logs read: which, what was damaged, how
/// many records and malformed lines, and where those are.
fn logs_read(out: &mut String, s: &Summary) {
    let _ = writeln!(out, "Logs:         {}", cell(&s.logs.join(", ")));
    for d in &s.damaged_logs {
        let _ = writeln!(
            out,
            "Damaged:      {}: damaged gzip stream ({}): {} lines of its gzip member {} were read before the damage was detected; they were counted and may be altered; the rest of the file was skipped",
            terminal_safe(&d.log),
            terminal_safe(&d.error),
            d.lines_counted,
            d.gzip_member,
        );
    }
    let _ = writeln!(
        out,
        "Records:      {} read ({} malformed lines skipped, {} records outside the time range)",
        s.records_read, s.malformed_lines, s.outside_time_range
    );
    for m in &s.malformed_logs {
        let _ = writeln!(
            out,
            "Malformed:    {}: {} skipped, the first at line {}",
            terminal_safe(&m.log),
            m.lines,
            m.first_line
        );
    }
}

/// The overview's counts of what the report counted.
fn counted(out: &mut String, s: &Summary) {
    let repeats = s.records_read - s.records - s.protocol_answers.total;
    let _ = writeln!(
        out,
        "Decisions:    {} policy decisions counted, {}",
        s.records,
        if s.legs == "both" {
            "both legs of each call (--legs both)".to_owned()
        } else {
            format!(
                "each call once per client ({repeats} repeats left out: {} registrar-leg passes, {} retries after a 401/407 challenge; --legs both counts them)",
                repeats - s.after_challenge.min(repeats),
                s.after_challenge.min(repeats),
            )
        }
    );
    let _ = writeln!(
        out,
        "Protocol:     {} protocol and capacity answers, counted apart (not policy decisions)",
        s.protocol_answers.total
    );
    if s.undelivered > 0 {
        let _ = writeln!(
            out,
            "Undelivered:  {} records whose answer or relayed message never reached its peer (its connection had closed, or its write queue was full)",
            s.undelivered
        );
    }
    let leg = |l: &super::summary::LegCounts| {
        format!(
            "{} ({} policy, {} protocol)",
            l.records, l.policy, l.protocol
        )
    };
    let _ = writeln!(
        out,
        "Legs:         from clients {}, from the registrar {}",
        leg(&s.by_leg.from_client),
        leg(&s.by_leg.from_registrar)
    );
    let bound = |b: &Option<super::summary::Millis>| b.map_or("-".to_owned(), |t| t.to_string());
    if s.since.is_some() || s.until.is_some() {
        let _ = writeln!(
            out,
            "Time range:   --since {} (inclusive) --until {} (exclusive)",
            bound(&s.since),
            bound(&s.until)
        );
    }
    let _ = writeln!(
        out,
        "First / last: {} .. {} (UTC)",
        bound(&s.first_record),
        bound(&s.last_record)
    );
}

fn decisions(out: &mut String, s: &Summary) {
    heading(out, "Policy decisions by role and action");
    let mut t = Table::new(&[
        ("ROLE", Align::Left),
        ("RECORDS", Align::Right),
        ("ALLOW", Align::Right),
        ("FLAG", Align::Right),
        ("REJECT", Align::Right),
        ("DROP", Align::Right),
    ]);
    for r in &s.by_role_and_action {
        let mut row = vec![r.role.to_owned(), r.count.to_string()];
        row.extend(r.by_action.0.iter().map(|(_, c)| c.to_string()));
        t.row(row);
    }
    let mut total = vec!["all".to_owned(), s.records.to_string()];
    total.extend(s.by_action.0.iter().map(|(_, c)| c.to_string()));
    t.row(total);
    t.render(out);
    let _ = writeln!(out, "  Mode: {}", counts_line(&s.by_mode));
    let _ = writeln!(out, "  Support class: {}", counts_line(&s.by_support));
    let _ = writeln!(
        out,
        "  REGISTERs: registrations {}, de-registrations {}",
        s.registers.register, s.registers.unregister
    );
    heading(out, "Policy rules");
    top_table(out, "RULE", &s.by_rule, s.records);
}

fn clients(out: &mut String, s: &Summary) {
    heading(out, "Clients");
    let both = s.legs == "both";
    let mut columns = vec![
        ("CLIENT", Align::Left),
        ("SUPPORT", Align::Left),
        ("CATEGORY", Align::Left),
        ("RECORDS", Align::Right),
        ("SHARE", Align::Right),
        ("ALLOW", Align::Right),
        ("FLAG", Align::Right),
        ("REJECT", Align::Right),
        ("DROP", Align::Right),
    ];
    if both {
        columns.extend([
            ("FROM CLIENT", Align::Right),
            ("FROM REGISTRAR", Align::Right),
        ]);
    }
    columns.push(("VERSIONS SEEN", Align::Left));
    let mut t = Table::new(&columns);
    for c in &s.by_client {
        let mut versions: Vec<String> = c
            .versions
            .iter()
            .take(3)
            .map(|v| format!("{} ({})", v.version, v.count))
            .collect();
        if c.versions.len() > 3 {
            versions.push(format!("+{} more", c.versions.len() - 3));
        }
        let mut row = vec![
            c.client.clone(),
            c.support.to_owned(),
            c.category.to_owned(),
            c.count.to_string(),
            percent(c.count, s.records),
        ];
        row.extend(c.by_action.0.iter().map(|(_, n)| n.to_string()));
        if both {
            row.extend(c.by_leg.0.iter().map(|(_, n)| n.to_string()));
        }
        row.push(if versions.is_empty() {
            "-".to_owned()
        } else {
            versions.join(", ")
        });
        t.row(row);
    }
    if s.by_client.is_empty() {
        out.push_str("  none\n");
    } else {
        t.render(out);
    }
    let reclassified: u64 = s.by_client.iter().map(|c| c.reclassified).sum();
    if reclassified > 0 {
        let _ = writeln!(
            out,
            "  {reclassified} records name a client that the current catalog no longer gives their User-Agent"
        );
    }
}

fn would_reject(out: &mut String, s: &Summary) {
    heading(out, "Monitor mode: what enforcing would change");
    let w = &s.would_reject;
    if w.total == 0 {
        let monitor = s.by_mode.get("monitor");
        let _ = writeln!(
            out,
            "  No record marked would_reject ({monitor} records in monitor mode)."
        );
        return;
    }
    for sentence in w.sentences() {
        let _ = writeln!(out, "  {sentence}");
    }
    let _ = writeln!(out, "  By role: {}", counts_line(&w.by_role));
    top_table(out, "CLIENT", &w.by_client, w.total);
    top_table(out, "RULE", &w.by_rule, w.total);
}

fn rejected_and_flagged(out: &mut String, s: &Summary) {
    heading(out, "Rejected and flagged");
    let r = &s.rejected_and_flagged;
    let whole = r.reject + r.flag;
    let _ = writeln!(
        out,
        "  {} rejected, {} flagged ({} of them would_reject)",
        r.reject,
        r.flag,
        s.would_reject.total - s.would_reject.answered_on_the_way
    );
    if whole == 0 {
        return;
    }
    top_table(out, "SOURCE", &r.sources, whole);
    top_table(out, "USER (FROM)", &r.users, whole);
    top_table(
        out,
        "WORKFLOW (REQUEST-URI OF CALLERS)",
        &r.workflows,
        whole,
    );
}

fn protocol_answers(out: &mut String, s: &Summary) {
    heading(out, "Protocol and capacity answers (not policy decisions)");
    let p = &s.protocol_answers;
    if p.total == 0 {
        out.push_str("  none\n");
        return;
    }
    let _ = writeln!(
        out,
        "  {} answered or dropped for a protocol or capacity reason ({}); not counted under",
        p.total,
        counts_line(&p.by_leg)
    );
    out.push_str("  the clients, actions and policy rules above.\n");
    let mut t = Table::new(&[
        ("RECORDS", Align::Right),
        ("STATUS", Align::Right),
        ("RULE", Align::Left),
    ]);
    for r in p.by_rule.iter().take(TOP_ROWS) {
        t.row(vec![
            r.count.to_string(),
            r.status.map_or("-".to_owned(), |s| s.to_string()),
            r.rule.clone(),
        ]);
    }
    t.render(out);
    more(out, TOP_ROWS, p.by_rule.len(), "rules");
    top_table(out, "SOURCE", &p.sources, p.total);
}

fn unknown_user_agents(out: &mut String, s: &Summary) {
    let records: u64 = s.unknown_user_agents.iter().map(|u| u.count).sum();
    heading(
        out,
        "User-Agents the catalog did not recognise (client \"unknown\")",
    );
    if s.unknown_user_agents.is_empty() {
        out.push_str("  none\n");
        return;
    }
    let left_out = s.not_itemised.get("unknown_user_agents");
    if left_out == 0 {
        let _ = writeln!(
            out,
            "  {} distinct, {records} records",
            s.unknown_user_agents.len()
        );
    } else {
        let most = s.not_itemised_per_key_max.get("unknown_user_agents");
        let _ = writeln!(
            out,
            "  {} listed, {records} records, and {left_out} records not itemised (the table was full:\n  the most frequent are listed; no User-Agent left out had more than {most} records,\n  and a listed one had at most {most} more than shown)",
            s.unknown_user_agents.len()
        );
    }
    let mut t = Table::new(&[
        ("RECORDS", Align::Right),
        ("FIRST SEEN", Align::Left),
        ("LAST SEEN", Align::Left),
        ("USER-AGENT", Align::Left),
    ]);
    for u in s.unknown_user_agents.iter().take(TOP_USER_AGENTS) {
        t.row(vec![
            u.count.to_string(),
            u.first_seen.to_string(),
            u.last_seen.to_string(),
            u.user_agent.clone(),
        ]);
    }
    t.render(out);
    more(
        out,
        TOP_USER_AGENTS,
        s.unknown_user_agents.len(),
        "User-Agents",
    );
    heading(out, "Catalog entries for the top unknown User-Agents");
    out.push_str("  Paste at the end of the catalog file named by [catalog] path (to start\n");
    out.push_str("  one, copy config/clients.toml and set the path), after review; then\n");
    out.push_str("  `sipadmit check-config` and SIGHUP (a reload applies it, no restart).\n");
    for snippet in &s.catalog_snippets {
        out.push('\n');
        // The snippet's strings are TOML-escaped: no control characters.
        out.push_str(&snippet.toml);
    }
}

fn over_time(out: &mut String, s: &Summary) {
    let o = &s.over_time;
    heading(out, &format!("Decisions over time (per {}, UTC)", o.bucket));
    out.push_str("  RECORDS: policy decisions; PROTOCOL: protocol and capacity answers, apart.\n");
    if o.buckets.is_empty() {
        out.push_str("  none\n");
        return;
    }
    let peak = o
        .buckets
        .iter()
        .map(|b| b.total())
        .max()
        .unwrap_or(0)
        .max(1);
    let mut t = Table::new(&[
        ("START", Align::Left),
        ("RECORDS", Align::Right),
        ("ALLOW", Align::Right),
        ("FLAG", Align::Right),
        ("REJECT", Align::Right),
        ("DROP", Align::Right),
        ("WOULD-REJECT", Align::Right),
        ("PROTOCOL", Align::Right),
        ("", Align::Left),
    ]);
    for b in &o.buckets {
        let total = b.total();
        let bar = (total * BAR_WIDTH).div_ceil(peak) as usize;
        let mut cells = b.cells();
        cells.push("#".repeat(bar));
        t.row(cells);
    }
    t.render(out);
}

fn not_itemised(out: &mut String, s: &Summary) {
    if s.not_itemised.total() == 0 {
        return;
    }
    heading(out, "Not itemised");
    out.push_str("  A table lists at most 10,000 keys (and 4 MiB of keys; 100 versions per\n");
    out.push_str("  client). A full table keeps the most frequent: a new key takes the place of\n");
    out.push_str("  the one with the fewest records, whose records stay in every total but are\n");
    out.push_str("  no longer listed. Per table, those records, and the most one key can have\n");
    out.push_str("  among them: a key not listed had at most that many records (a key with more\n");
    out.push_str("  is listed), a listed key at most that many more than its count.\n");
    let mut t = Table::new(&[
        ("TABLE", Align::Left),
        ("RECORDS", Align::Right),
        ("PER KEY AT MOST", Align::Right),
    ]);
    for &(name, records) in &s.not_itemised.0 {
        if records > 0 {
            t.row(vec![
                name.to_owned(),
                records.to_string(),
                s.not_itemised_per_key_max.get(name).to_string(),
            ]);
        }
    }
    t.render(out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_escape_terminal_controls_and_are_shortened() {
        assert_eq!(cell("a\u{1b}[31mred\u{7}"), "a\\u{1b}[31mred\\u{7}");
        assert_eq!(cell("x\u{202e}y"), "x\\u{202e}y");
        let long = "é".repeat(150);
        assert_eq!(cell(&long).chars().count(), MAX_CELL_CHARS + 1);
    }

    #[test]
    fn tables_align_numbers_right_and_leave_no_trailing_spaces() {
        let mut t = Table::new(&[
            ("NAME", Align::Left),
            ("N", Align::Right),
            ("NOTE", Align::Left),
        ]);
        t.row(vec!["a".into(), "1".into(), "".into()]);
        t.row(vec!["long-name".into(), "1234".into(), "x".into()]);
        let mut out = String::new();
        t.render(&mut out);
        assert_eq!(
            out,
            "  NAME          N  NOTE\n  a             1\n  long-name  1234  x\n"
        );
    }
}
