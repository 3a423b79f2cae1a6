//! The HTML report: one self-contained page (inline CSS, inline SVG
//! charts, no script, nothing fetched: its Content-Security-Policy allows
//! no network source at all) that an admin can open or mail. Every value
//! from the log is HTML-escaped.
//!
//! Figures (each a `<figure>` with an `id`, for tests and for linking):
//! `decisions-over-time` (stacked bars by action), `share-by-client` (a
//! donut of the top clients), `top-unknown-user-agents` (horizontal bars).

use std::fmt::Write as _;

use super::plain::{TOP_ROWS, TOP_USER_AGENTS};
use super::summary::{KeyCount, Summary, TimeBucket};

/// Clients shown in the share-by-client figure (the rest are "others"): 8.
pub const CHART_CLIENTS: usize = 8;
/// Unknown User-Agents shown in their figure: 10.
pub const CHART_USER_AGENTS: usize = 10;

/// Colours of allow, flag, reject, drop.
const ACTION_COLOURS: [&str; 4] = ["#4e9a06", "#e9a100", "#cc0000", "#75507b"];
const ACTION_NAMES: [&str; 4] = ["allow", "flag", "reject", "drop"];
/// Colours of the client slices (the last one: others).
const SLICE_COLOURS: [&str; CHART_CLIENTS + 1] = [
    "#3465a4", "#f57900", "#73d216", "#c17d11", "#75507b", "#cc0000", "#06989a", "#edd400",
    "#888a85",
];

const STYLE: &str = "\
body{font:14px/1.4 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;color:#222;margin:2em auto;max-width:1100px;padding:0 1em}\
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ccc}\
.meta{color:#555}.cards{display:flex;flex-wrap:wrap;gap:.8em;margin:1em 0}\
.card{border:1px solid #ddd;border-radius:6px;padding:.5em 1em;min-width:7em}\
.card b{display:block;font-size:1.5em}\
table{border-collapse:collapse;margin:.5em 0}th,td{padding:.2em .7em;border-bottom:1px solid #eee;text-align:left;vertical-align:top}\
th{background:#f4f4f4}td.n{text-align:right;font-variant-numeric:tabular-nums}\
td.ua{font-family:monospace;word-break:break-all;max-width:40em}\
figure{margin:1.5em 0}figcaption{font-weight:600;margin-bottom:.4em}\
svg text{font:11px system-ui,sans-serif;fill:#333}\
pre{background:#f7f7f7;border:1px solid #ddd;padding:.7em;overflow-x:auto}\
.legend span{display:inline-block;margin-right:1.2em}.swatch{display:inline-block;width:.8em;height:.8em;margin-right:.3em;vertical-align:middle}\
.empty{color:#777;font-style:italic}";

/// Escape text for HTML content and attribute values (and SVG in HTML).
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() && !matches!(c, '\n' | '\t') => {
                let _ = write!(out, "\u{fffd}");
            }
            c => out.push(c),
        }
    }
    out
}

/// The first `max` characters of `text`, with `…` when cut.
fn shorten(text: &str, max: usize) -> String {
    let mut out: String = text.chars().take(max).collect();
    if text.chars().nth(max).is_some() {
        out.push('…');
    }
    out
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

/// The whole page.
pub fn render(s: &Summary) -> String {
    let mut out = String::new();
    out.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">");
    out.push_str(
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">",
    );
    out.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">");
    out.push_str("<title>sipadmit decision report</title><style>");
    out.push_str(STYLE);
    out.push_str("</style></head>\n<body>\n<h1>sipadmit decision report</h1>\n");
    overview(&mut out, s);
    out.push_str("<h2>Figures</h2>\n");
    over_time_figure(&mut out, s);
    client_share_figure(&mut out, s);
    unknown_figure(&mut out, s);
    tables(&mut out, s);
    out.push_str("</body></html>\n");
    out
}

fn overview(out: &mut String, s: &Summary) {
    let bound = |b: Option<super::summary::Millis>| b.map_or("-".to_owned(), |t| t.to_string());
    let _ = writeln!(
        out,
        "<p class=\"meta\">Logs: {}<br>Records from {} to {} (UTC){}</p>",
        escape(&s.logs.join(", ")),
        bound(s.first_record),
        bound(s.last_record),
        if s.since.is_some() || s.until.is_some() {
            format!(
                "; time range --since {} (inclusive) --until {} (exclusive)",
                bound(s.since),
                bound(s.until)
            )
        } else {
            String::new()
        }
    );
    out.push_str("<div class=\"cards\" id=\"totals\">");
    let mut card = |label: &str, value: u64| {
        let _ = write!(out, "<div class=\"card\"><b>{value}</b>{label}</div>");
    };
    card("records", s.records);
    for (name, count) in &s.by_action.0 {
        card(name, *count);
    }
    card("would reject", s.would_reject.total);
    card("unknown User-Agents", s.unknown_user_agents.len() as u64);
    card("malformed lines", s.malformed_lines);
    out.push_str("</div>\n");
}

fn legend(out: &mut String, items: &[(&str, String)]) {
    out.push_str("<div class=\"legend\">");
    for (colour, label) in items {
        let _ = write!(
            out,
            "<span><i class=\"swatch\" style=\"background:{colour}\"></i>{}</span>",
            escape(label)
        );
    }
    out.push_str("</div>");
}

fn bucket_label(b: &TimeBucket) -> String {
    // 2026-11-27T10:00:00.000Z -> 2026-11-27 10:00
    let text = b.start.to_string();
    text.get(..16).unwrap_or(&text).replace('T', " ")
}

fn over_time_figure(out: &mut String, s: &Summary) {
    let o = &s.over_time;
    let _ = write!(
        out,
        "<figure id=\"decisions-over-time\"><figcaption>Decisions over time (per {}, UTC)</figcaption>",
        escape(&o.bucket)
    );
    if o.buckets.is_empty() {
        out.push_str("<p class=\"empty\">No records.</p></figure>\n");
        return;
    }
    let (width, height, left, top, bottom) = (900.0, 260.0, 56.0, 10.0, 40.0);
    let plot_w = width - left - 10.0;
    let plot_h = height - top - bottom;
    let peak = o
        .buckets
        .iter()
        .map(TimeBucket::total)
        .max()
        .unwrap_or(0)
        .max(1);
    let step = plot_w / o.buckets.len() as f64;
    let bar_w = (step * 0.85).max(0.5);
    let _ = write!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" role=\"img\" aria-label=\"Decisions over time\">"
    );
    let base = top + plot_h;
    let _ = write!(
        out,
        "<line x1=\"{left}\" y1=\"{base}\" x2=\"{}\" y2=\"{base}\" stroke=\"#999\"/><line x1=\"{left}\" y1=\"{top}\" x2=\"{}\" y2=\"{top}\" stroke=\"#eee\"/>",
        width - 10.0,
        width - 10.0
    );
    let _ = write!(
        out,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{peak}</text><text x=\"{}\" y=\"{base}\" text-anchor=\"end\">0</text>",
        left - 4.0,
        top + 10.0,
        left - 4.0
    );
    for (i, b) in o.buckets.iter().enumerate() {
        let x = left + i as f64 * step;
        let counts = [b.allow, b.flag, b.reject, b.drop];
        let _ = write!(
            out,
            "<g><title>{}: {} records (allow {}, flag {}, reject {}, drop {}, would reject {})</title>",
            bucket_label(b),
            b.total(),
            b.allow,
            b.flag,
            b.reject,
            b.drop,
            b.would_reject
        );
        let mut y = base;
        for (n, colour) in counts.iter().zip(ACTION_COLOURS) {
            if *n == 0 {
                continue;
            }
            let h = *n as f64 / peak as f64 * plot_h;
            y -= h;
            let _ = write!(
                out,
                "<rect class=\"segment\" x=\"{x:.2}\" y=\"{y:.2}\" width=\"{bar_w:.2}\" height=\"{h:.2}\" fill=\"{colour}\"/>"
            );
        }
        out.push_str("</g>");
    }
    let last = o.buckets.len() - 1;
    let mut marks = vec![(0, "start")];
    if last >= 2 {
        marks.push((last / 2, "middle"));
    }
    if last >= 1 {
        marks.push((last, "end"));
    }
    for (i, anchor) in marks {
        let x = left + i as f64 * step + bar_w / 2.0;
        let _ = write!(
            out,
            "<text x=\"{x:.2}\" y=\"{}\" text-anchor=\"{anchor}\">{}</text>",
            base + 16.0,
            bucket_label(&o.buckets[i])
        );
    }
    out.push_str("</svg>");
    let items: Vec<(&str, String)> = ACTION_COLOURS
        .iter()
        .zip(ACTION_NAMES)
        .map(|(c, n)| (*c, n.to_owned()))
        .collect();
    legend(out, &items);
    out.push_str("</figure>\n");
}

fn client_share_figure(out: &mut String, s: &Summary) {
    out.push_str(
        "<figure id=\"share-by-client\"><figcaption>Share of records by client</figcaption>",
    );
    if s.records == 0 || s.by_client.is_empty() {
        out.push_str("<p class=\"empty\">No records.</p></figure>\n");
        return;
    }
    let mut slices: Vec<(String, u64)> = s
        .by_client
        .iter()
        .take(CHART_CLIENTS)
        .map(|c| (c.client.clone(), c.count))
        .collect();
    let shown: u64 = slices.iter().map(|(_, n)| n).sum();
    if s.records > shown {
        slices.push(("others".to_owned(), s.records - shown));
    }
    out.push_str(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"220\" height=\"220\" viewBox=\"0 0 220 220\" role=\"img\" aria-label=\"Share by client\">",
    );
    let mut offset = 0.0;
    let mut items = Vec::new();
    for (i, (name, count)) in slices.iter().enumerate() {
        let colour = if name == "others" && i == slices.len() - 1 {
            SLICE_COLOURS[CHART_CLIENTS]
        } else {
            SLICE_COLOURS[i % CHART_CLIENTS]
        };
        let share = percent(*count, s.records);
        // A circle drawn from the top, clockwise: pathLength 100 makes the
        // dash length the percentage.
        let _ = write!(
            out,
            "<circle class=\"slice\" cx=\"110\" cy=\"110\" r=\"70\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"40\" pathLength=\"100\" stroke-dasharray=\"{share:.3} {:.3}\" stroke-dashoffset=\"{:.3}\" transform=\"rotate(-90 110 110)\"><title>{}: {count} records ({share:.1}%)</title></circle>",
            100.0 - share,
            -offset,
            escape(name)
        );
        offset += share;
        items.push((colour, format!("{name} {count} ({share:.1}%)")));
    }
    out.push_str("</svg>");
    legend(out, &items);
    out.push_str("</figure>\n");
}

fn unknown_figure(out: &mut String, s: &Summary) {
    out.push_str(
        "<figure id=\"top-unknown-user-agents\"><figcaption>Top User-Agents the catalog did not recognise</figcaption>",
    );
    let top: Vec<_> = s
        .unknown_user_agents
        .iter()
        .take(CHART_USER_AGENTS)
        .collect();
    if top.is_empty() {
        out.push_str(
            "<p class=\"empty\">None: the catalog recognised every User-Agent.</p></figure>\n",
        );
        return;
    }
    let peak = top.iter().map(|u| u.count).max().unwrap_or(1).max(1);
    let (width, label_w, row_h) = (900.0, 420.0, 24.0);
    let bar_max = width - label_w - 70.0;
    let height = row_h * top.len() as f64 + 8.0;
    let _ = write!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" role=\"img\" aria-label=\"Top unknown User-Agents\">"
    );
    for (i, u) in top.iter().enumerate() {
        let y = 4.0 + i as f64 * row_h;
        let w = (u.count as f64 / peak as f64 * bar_max).max(1.0);
        let _ = write!(
            out,
            "<g><title>{}: {} records, {} .. {}</title><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text><rect class=\"ua-bar\" x=\"{label_w}\" y=\"{y:.1}\" width=\"{w:.2}\" height=\"{:.1}\" fill=\"#3465a4\"/><text x=\"{:.2}\" y=\"{:.1}\">{}</text></g>",
            escape(&u.user_agent),
            u.count,
            u.first_seen,
            u.last_seen,
            label_w - 6.0,
            y + 15.0,
            escape(&shorten(&u.user_agent, 60)),
            row_h - 6.0,
            label_w + w + 4.0,
            y + 15.0,
            u.count
        );
    }
    out.push_str("</svg></figure>\n");
}

/// `<table>` with a header; cells are escaped; `numeric` columns align right.
fn table(out: &mut String, id: &str, header: &[&str], numeric: &[bool], rows: &[Vec<String>]) {
    let _ = write!(out, "<table id=\"{id}\"><thead><tr>");
    for h in header {
        let _ = write!(out, "<th>{}</th>", escape(h));
    }
    out.push_str("</tr></thead><tbody>");
    for row in rows {
        out.push_str("<tr>");
        for (i, c) in row.iter().enumerate() {
            let class = if numeric.get(i).copied().unwrap_or(false) {
                " class=\"n\""
            } else if header.get(i).is_some_and(|h| *h == "User-Agent") {
                " class=\"ua\""
            } else {
                ""
            };
            let _ = write!(out, "<td{class}>{}</td>", escape(c));
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table>\n");
}

fn key_rows(rows: &[KeyCount], whole: u64) -> Vec<Vec<String>> {
    rows.iter()
        .take(TOP_ROWS)
        .map(|r| {
            vec![
                r.key.clone(),
                r.count.to_string(),
                format!("{:.1}%", percent(r.count, whole)),
            ]
        })
        .collect()
}

fn tables(out: &mut String, s: &Summary) {
    out.push_str("<h2>Decisions by role and action</h2>\n");
    let mut rows: Vec<Vec<String>> = s
        .by_role_and_action
        .iter()
        .map(|r| {
            let mut row = vec![r.role.to_owned(), r.count.to_string()];
            row.extend(r.by_action.0.iter().map(|(_, c)| c.to_string()));
            row
        })
        .collect();
    let mut all = vec!["all".to_owned(), s.records.to_string()];
    all.extend(s.by_action.0.iter().map(|(_, c)| c.to_string()));
    rows.push(all);
    let num = [false, true, true, true, true, true];
    table(
        out,
        "by-role-and-action",
        &["Role", "Records", "Allow", "Flag", "Reject", "Drop"],
        &num,
        &rows,
    );
    let modes: Vec<Vec<String>> = s
        .by_mode
        .0
        .iter()
        .chain(&s.by_support.0)
        .map(|(n, c)| vec![(*n).to_owned(), c.to_string()])
        .collect();
    let (by_mode, by_support) = modes.split_at(s.by_mode.0.len());
    table(
        out,
        "by-mode",
        &["Mode", "Records"],
        &[false, true],
        by_mode,
    );
    table(
        out,
        "by-support",
        &["Support class", "Records"],
        &[false, true],
        by_support,
    );

    out.push_str("<h2>Clients</h2>\n");
    let rows: Vec<Vec<String>> = s
        .by_client
        .iter()
        .map(|c| {
            let mut row = vec![
                c.client.clone(),
                c.support.to_owned(),
                c.category.to_owned(),
                c.count.to_string(),
                format!("{:.1}%", percent(c.count, s.records)),
            ];
            row.extend(c.by_action.0.iter().map(|(_, n)| n.to_string()));
            row.push(
                c.versions
                    .iter()
                    .take(5)
                    .map(|v| format!("{} ({})", v.version, v.count))
                    .collect::<Vec<_>>()
                    .join(", "),
            );
            row
        })
        .collect();
    table(
        out,
        "by-client",
        &[
            "Client",
            "Support",
            "Category",
            "Records",
            "Share",
            "Allow",
            "Flag",
            "Reject",
            "Drop",
            "Versions seen",
        ],
        &[
            false, false, false, true, true, true, true, true, true, false,
        ],
        &rows,
    );

    out.push_str("<h2>Monitor mode: what enforcing would change</h2>\n");
    let w = &s.would_reject;
    let _ = writeln!(
        out,
        "<p>{} records relayed in monitor mode would have been rejected in enforce mode.</p>",
        w.total
    );
    if w.total > 0 {
        table(
            out,
            "would-reject-clients",
            &["Client", "Records", "Share"],
            &[false, true, true],
            &key_rows(&w.by_client, w.total),
        );
        table(
            out,
            "would-reject-rules",
            &["Rule", "Records", "Share"],
            &[false, true, true],
            &key_rows(&w.by_rule, w.total),
        );
    }

    out.push_str("<h2>Rejected and flagged</h2>\n");
    let r = &s.rejected_and_flagged;
    let whole = r.reject + r.flag;
    let _ = writeln!(out, "<p>{} rejected, {} flagged.</p>", r.reject, r.flag);
    if whole > 0 {
        table(
            out,
            "top-sources",
            &["Source", "Records", "Share"],
            &[false, true, true],
            &key_rows(&r.sources, whole),
        );
        table(
            out,
            "top-users",
            &["User (From)", "Records", "Share"],
            &[false, true, true],
            &key_rows(&r.users, whole),
        );
        table(
            out,
            "top-workflows",
            &["Workflow (Request-URI of callers)", "Records", "Share"],
            &[false, true, true],
            &key_rows(&r.workflows, whole),
        );
    }

    out.push_str("<h2>User-Agents the catalog did not recognise</h2>\n");
    let rows: Vec<Vec<String>> = s
        .unknown_user_agents
        .iter()
        .take(TOP_USER_AGENTS)
        .map(|u| {
            vec![
                u.user_agent.clone(),
                u.count.to_string(),
                u.first_seen.to_string(),
                u.last_seen.to_string(),
            ]
        })
        .collect();
    table(
        out,
        "unknown-user-agents",
        &["User-Agent", "Records", "First seen", "Last seen"],
        &[false, true, false, false],
        &rows,
    );
    let snippets: Vec<&str> = s.catalog_snippets.iter().map(|c| c.toml.as_str()).collect();
    if !snippets.is_empty() {
        out.push_str("<h2>Catalog entries for the top unknown User-Agents</h2>\n<p>Paste at the end of the catalog after review, then run <code>sipadmit check-config</code>.</p>\n<pre id=\"catalog-snippets\">");
        out.push_str(&escape(&snippets.join("\n")));
        out.push_str("</pre>\n");
    }
    if s.not_itemised.total() > 0 {
        let _ = writeln!(
            out,
            "<p>Records counted but not itemised (a table was full): {}</p>",
            escape(
                &s.not_itemised
                    .0
                    .iter()
                    .filter(|(_, c)| *c > 0)
                    .map(|(n, c)| format!("{n} {c}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_covers_markup_and_quotes() {
        assert_eq!(
            escape("<script>alert('x')</script> & \"y\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;y&quot;"
        );
        assert_eq!(escape("a\u{0}b"), "a\u{fffd}b");
    }
}
