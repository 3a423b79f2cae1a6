//! The HTML report: one self-contained page (inline CSS, inline SVG
//! charts, no script, nothing fetched: its Content-Security-Policy allows
//! no network source at all) that an admin can open or mail. Every value
//! from the log is HTML-escaped.
//!
//! Figures (each a `<figure>` with an `id`, for tests and for linking):
//! `decisions-over-time` (stacked bars by action), `share-by-client` (a
//! donut of the top clients), `top-unknown-user-agents` (horizontal bars).
//! The page uses the window's width: the time chart and the bars are laid
//! out in percentages of it, while their text keeps its size in pixels
//! (at least 12 px). Actions and clients have palettes of their own that
//! share no colour: green, amber, red and purple always mean allow, flag,
//! reject and drop; clients are blues, cyans, teals, pink and greys.

use std::fmt::Write as _;

use super::plain::{TOP_ROWS, TOP_USER_AGENTS};
use super::summary::{KeyCount, Summary, TimeBucket};

/// Clients shown in the share-by-client figure (the rest are "others"): 8.
pub const CHART_CLIENTS: usize = 8;
/// Unknown User-Agents shown in their figure: 10.
pub const CHART_USER_AGENTS: usize = 10;
/// Time labels the time chart aims at (at most about this many): 12.
pub const TIME_LABELS: usize = 12;
/// Smallest font size of any text on the page, figures included, in px.
pub const MIN_FONT_PX: u32 = 12;

/// Colours of allow, flag, reject, drop (the action palette).
pub const ACTION_COLOURS: [&str; 4] = ["#4e9a06", "#e9a100", "#cc0000", "#75507b"];
const ACTION_NAMES: [&str; 4] = ["allow", "flag", "reject", "drop"];
/// Colours of the client slices, the last one for "others" (the client
/// palette: no colour, and no hue, of the action palette).
pub const CLIENT_COLOURS: [&str; CHART_CLIENTS + 1] = [
    "#1f77b4", "#17becf", "#e377c2", "#0b3c5d", "#9ecae1", "#8dd3c7", "#3a3f8f", "#5b6770",
    "#c7c7c7",
];
/// Colour of the unknown User-Agent bars: the client palette's (they are
/// clients, `unknown`), not an action's.
const UNKNOWN_BAR_COLOUR: &str = "#1f77b4";

const STYLE: &str = "\
body{font:15px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;color:#222;margin:1.5em 2.5%;padding:0}\
h1{font-size:1.7em;margin-bottom:.2em}h2{font-size:1.25em;margin-top:2em;border-bottom:1px solid #ccc}\
.meta{color:#555}.cards{display:flex;flex-wrap:wrap;gap:.8em;margin:1em 0}\
.card{border:1px solid #ddd;border-radius:6px;padding:.5em 1em;min-width:7em}\
.card b{display:block;font-size:1.5em}\
table{border-collapse:collapse;margin:.5em 0}th,td{padding:.25em .8em;border-bottom:1px solid #eee;text-align:left;vertical-align:top}\
th{background:#f4f4f4}td.n{text-align:right;font-variant-numeric:tabular-nums}\
td.ua{font-family:monospace;word-break:break-all;max-width:60em}\
figure{margin:1.5em 0}figcaption{font-weight:600;margin-bottom:.4em}\
svg text{font:13px system-ui,sans-serif;fill:#333}\
.chart{display:flex;align-items:flex-start;width:100%}.chart svg.axis{flex:none}.chart svg.plot{flex:1 1 auto;min-width:0}\
.donut{display:flex;flex-wrap:wrap;align-items:center;gap:2em}.donut .legend span{display:block;margin:.2em 0}\
.bars{display:grid;grid-template-columns:minmax(16em,38%) 1fr;gap:.35em 1em;align-items:center;width:100%}\
.bars .label{font:13px monospace;text-align:right;overflow-wrap:anywhere}\
.bars svg{display:block;width:100%;height:20px}\
.wide{display:flex;flex-wrap:wrap;gap:0 3em;align-items:flex-start}\
pre{background:#f7f7f7;border:1px solid #ddd;padding:.7em;overflow-x:auto}\
.legend span{display:inline-block;margin-right:1.2em}.swatch{display:inline-block;width:.9em;height:.9em;margin-right:.35em;vertical-align:middle}\
.damaged{border:2px solid #b3261e;border-radius:6px;padding:0 1em;margin:1em 0}\
.note{color:#555}.empty{color:#777;font-style:italic}";

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
            // Shown as its code, as the plain report does: rendered, it
            // would reorder the text around it.
            c if crate::terminal_text::is_bidi_control(c) => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
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

/// The logs read only up to a damage, when there are any: said at the top,
/// where a reader of a mailed page sees it.
fn damaged_logs(out: &mut String, s: &Summary) {
    if s.damaged_logs.is_empty() {
        return;
    }
    out.push_str("<div class=\"damaged\" id=\"damaged-logs\"><p><b>Damaged logs: counted up to the damage only.</b> gzip checks a member's checksum only at its end, so the lines read before the damage was detected were counted and may be altered; the rest of each file was skipped.</p><ul>");
    for d in &s.damaged_logs {
        let _ = write!(
            out,
            "<li>{}: damaged gzip stream ({}): {} lines of its gzip member {} counted before the damage was detected</li>",
            escape(&d.log),
            escape(&d.error),
            d.lines_counted,
            d.gzip_member
        );
    }
    out.push_str("</ul></div>\n");
}

/// Where the malformed lines are, when there are any.
fn malformed_logs(out: &mut String, s: &Summary) {
    if s.malformed_logs.is_empty() {
        return;
    }
    out.push_str(
        "<p class=\"meta\" id=\"malformed-lines\">Lines that are not decision records, skipped:",
    );
    for m in &s.malformed_logs {
        let _ = write!(
            out,
            "<br>{}: {}, the first at line {}",
            escape(&m.log),
            m.lines,
            m.first_line
        );
    }
    out.push_str("</p>\n");
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
    damaged_logs(out, s);
    malformed_logs(out, s);
    let repeats = s.records_read - s.records - s.protocol_answers.total;
    let _ = writeln!(
        out,
        "<p class=\"meta\" id=\"counting\">{} records read: {} policy decisions counted ({}), {} protocol and capacity answers counted apart. From clients: {} records, from the registrar: {}.</p>",
        s.records_read,
        s.records,
        if s.legs == "both" {
            "both legs of each call, <code>--legs both</code>".to_owned()
        } else {
            format!(
                "each call once per client; {repeats} repeats left out ({} registrar-leg passes, {} retries after a 401/407 challenge), <code>--legs both</code> counts them",
                repeats - s.after_challenge.min(repeats),
                s.after_challenge.min(repeats),
            )
        },
        s.protocol_answers.total,
        s.by_leg.from_client.records,
        s.by_leg.from_registrar.records,
    );
    out.push_str("<div class=\"cards\" id=\"totals\">");
    let mut card = |label: &str, value: u64| {
        let _ = write!(out, "<div class=\"card\"><b>{value}</b>{label}</div>");
    };
    card("policy decisions", s.records);
    for (name, count) in &s.by_action.0 {
        card(name, *count);
    }
    card("would reject", s.would_reject.total);
    card("protocol answers", s.protocol_answers.total);
    if s.undelivered > 0 {
        card("undelivered", s.undelivered);
    }
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

/// `2026-11-27 10:00` for a bucket.
fn bucket_label(b: &TimeBucket) -> String {
    // 2026-11-27T10:00:00.000Z -> 2026-11-27 10:00
    let text = b.start.to_string();
    text.get(..16).unwrap_or(&text).replace('T', " ")
}

/// The step between y-axis ticks for bars up to `peak`: 1, 2 or 5 times a
/// power of ten, so that the axis has at most 5 steps above 0.
fn y_step(peak: u64) -> u64 {
    let raw = peak.div_ceil(5).max(1);
    let mut magnitude = 1u64;
    while magnitude.saturating_mul(10) <= raw {
        magnitude *= 10;
    }
    [1, 2, 5, 10]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|&step| step >= raw)
        .unwrap_or(10 * magnitude)
}

/// Seconds between labelled buckets: the shortest clock-aligned interval
/// (a multiple of the bucket width: 1, 2, 5, 10, 15, 30 minutes, 1, 2, 3,
/// 6, 12 hours, 1, 2, 7, 14 days, then doubling) that labels at most
/// [`TIME_LABELS`] of the buckets starting at `starts`.
fn label_interval(starts: &[i64], width: i64) -> i64 {
    const MINUTE: i64 = 60;
    const HOUR: i64 = 3600;
    const DAY: i64 = 86_400;
    let nice = [
        MINUTE,
        2 * MINUTE,
        5 * MINUTE,
        10 * MINUTE,
        15 * MINUTE,
        30 * MINUTE,
        HOUR,
        2 * HOUR,
        3 * HOUR,
        6 * HOUR,
        12 * HOUR,
        DAY,
        2 * DAY,
        7 * DAY,
        14 * DAY,
    ];
    let width = width.max(1);
    let doubling = std::iter::successors(Some(28 * DAY), |d| d.checked_mul(2)).take(40);
    let mut candidates = nice.into_iter().chain(doubling).filter(|c| c % width == 0);
    let fits = |interval: i64| {
        starts
            .iter()
            .filter(|s| s.rem_euclid(interval) == 0)
            .count()
            <= TIME_LABELS
    };
    // The width itself first (every bucket), for widths not in the list.
    std::iter::once(width)
        .chain(&mut candidates)
        .chain(std::iter::successors(Some(width * 2), |w| w.checked_mul(2)).take(60))
        .find(|&interval| fits(interval))
        .unwrap_or(width)
}

/// The `decisions-over-time` figure: stacked bars of the policy decisions
/// per bucket, a fixed-width y axis beside a plot as wide as the page,
/// clock-aligned time labels and the action legend.
fn over_time_figure(out: &mut String, s: &Summary) {
    let o = &s.over_time;
    let _ = write!(
        out,
        "<figure id=\"decisions-over-time\"><figcaption>Policy decisions over time (per {}, UTC)</figcaption>",
        escape(&o.bucket)
    );
    if o.buckets.is_empty() {
        out.push_str("<p class=\"empty\">No records.</p></figure>\n");
        return;
    }
    let scale = TimeChartScale::new(&o.buckets);
    out.push_str("<div class=\"chart\">");
    time_chart_y_axis(out, &scale);
    let _ = write!(
        out,
        "<svg class=\"plot\" xmlns=\"http://www.w3.org/2000/svg\" width=\"100%\" height=\"{}\" role=\"img\" aria-label=\"Policy decisions over time\">",
        scale.height
    );
    time_chart_grid(out, &scale);
    time_chart_bars(out, &o.buckets, &scale);
    time_chart_labels(out, &o.buckets, o.bucket_seconds, &scale);
    out.push_str("</svg></div>");
    let items: Vec<(&str, String)> = ACTION_COLOURS
        .iter()
        .zip(ACTION_NAMES)
        .map(|(c, n)| (*c, n.to_owned()))
        .collect();
    legend(out, &items);
    out.push_str("</figure>\n");
}

/// The geometry of the time chart: the y axis in its own fixed-width SVG,
/// the plot in one as wide as the page (x in percent, y in px), so that
/// text keeps its size at any width.
struct TimeChartScale {
    /// Width of the y-axis SVG, px.
    axis_w: f64,
    /// Height of both SVGs, px.
    height: f64,
    /// Margin above the plot area, px.
    top: f64,
    /// Height of the plot area, px.
    plot_h: f64,
    /// y of the zero line, px.
    base: f64,
    /// The value at the top of the axis: a whole number of steps.
    axis_max: u64,
    /// The y-axis ticks, from 0 up to `axis_max`.
    ticks: Vec<u64>,
    /// Width of one bucket's slot, percent of the plot.
    slot: f64,
    /// Width of one bar in its slot, percent of the plot.
    bar_w: f64,
}

impl TimeChartScale {
    /// The scale for `buckets` (not empty): the y axis up to the highest
    /// bar rounded up to a step, one slot per bucket.
    fn new(buckets: &[TimeBucket]) -> Self {
        let (axis_w, height, top, bottom) = (64.0, 300.0, 12.0, 46.0);
        let plot_h = height - top - bottom;
        let base = top + plot_h;
        let peak = buckets.iter().map(TimeBucket::total).max().unwrap_or(0);
        let step = y_step(peak);
        let axis_max = peak.div_ceil(step).max(1) * step;
        let ticks: Vec<u64> = (0..=axis_max / step).map(|i| i * step).collect();
        let n = buckets.len() as f64;
        let slot = 100.0 / n;
        let bar_w = slot * 0.8;
        TimeChartScale {
            axis_w,
            height,
            top,
            plot_h,
            base,
            axis_max,
            ticks,
            slot,
            bar_w,
        }
    }

    /// The y (px) of the value `v`.
    fn y_of(&self, v: u64) -> f64 {
        self.base - v as f64 / self.axis_max as f64 * self.plot_h
    }
}

/// The y-axis SVG: a label per tick and the rotated axis title.
fn time_chart_y_axis(out: &mut String, scale: &TimeChartScale) {
    let TimeChartScale {
        axis_w,
        height,
        top,
        plot_h,
        ..
    } = *scale;
    let _ = write!(
        out,
        "<svg class=\"axis\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{axis_w}\" height=\"{height}\" aria-hidden=\"true\">"
    );
    for &v in &scale.ticks {
        let _ = write!(
            out,
            "<text class=\"y-tick\" x=\"{}\" y=\"{:.1}\" text-anchor=\"end\" dominant-baseline=\"middle\">{v}</text>",
            axis_w - 8.0,
            scale.y_of(v)
        );
    }
    let _ = write!(
        out,
        "<text x=\"12\" y=\"{:.1}\" text-anchor=\"middle\" transform=\"rotate(-90 12 {:.1})\">records</text></svg>",
        top + plot_h / 2.0,
        top + plot_h / 2.0
    );
}

/// The horizontal grid lines of the plot, one per tick (the zero line darker).
fn time_chart_grid(out: &mut String, scale: &TimeChartScale) {
    for &v in &scale.ticks {
        let colour = if v == 0 { "#999" } else { "#e6e6e6" };
        let y = scale.y_of(v);
        let _ = write!(
            out,
            "<line x1=\"0\" y1=\"{y:.1}\" x2=\"100%\" y2=\"{y:.1}\" stroke=\"{colour}\"/>"
        );
    }
}

/// One stacked bar per bucket (allow, flag, reject, drop from the bottom up),
/// each in a group titled with the bucket's counts.
fn time_chart_bars(out: &mut String, buckets: &[TimeBucket], scale: &TimeChartScale) {
    let TimeChartScale {
        plot_h,
        base,
        axis_max,
        slot,
        bar_w,
        ..
    } = *scale;
    for (i, b) in buckets.iter().enumerate() {
        let x = i as f64 * slot + (slot - bar_w) / 2.0;
        let counts = [b.allow, b.flag, b.reject, b.drop];
        let _ = write!(
            out,
            "<g><title>{}: {} policy decisions (allow {}, flag {}, reject {}, drop {}, would reject {}); {} protocol answers</title>",
            bucket_label(b),
            b.total(),
            b.allow,
            b.flag,
            b.reject,
            b.drop,
            b.would_reject,
            b.protocol
        );
        let mut y = base;
        for (n, colour) in counts.iter().zip(ACTION_COLOURS) {
            if *n == 0 {
                continue;
            }
            let h = *n as f64 / axis_max as f64 * plot_h;
            y -= h;
            let _ = write!(
                out,
                "<rect class=\"segment\" x=\"{x:.3}%\" y=\"{y:.2}\" width=\"{bar_w:.3}%\" height=\"{h:.2}\" fill=\"{colour}\"/>"
            );
        }
        out.push_str("</g>");
    }
}

/// Time labels under the plot: clock-aligned buckets, the time on the first
/// line and the date on the second when it changes (or the date alone for
/// day buckets).
fn time_chart_labels(
    out: &mut String,
    buckets: &[TimeBucket],
    bucket_seconds: i64,
    scale: &TimeChartScale,
) {
    let TimeChartScale { base, slot, .. } = *scale;
    let starts: Vec<i64> = buckets.iter().map(|b| b.start.0.as_second()).collect();
    let interval = label_interval(&starts, bucket_seconds);
    let mut labelled: Vec<usize> = (0..starts.len())
        .filter(|&i| starts[i].rem_euclid(interval) == 0)
        .collect();
    if labelled.is_empty() {
        labelled.push(0);
    }
    let daily = bucket_seconds >= 86_400;
    let mut last_date = String::new();
    for i in labelled {
        let text = buckets[i].start.to_string();
        let (date, time) = (text.get(..10).unwrap_or(""), text.get(11..16).unwrap_or(""));
        let x = (i as f64 + 0.5) * slot;
        let anchor = if x < 3.0 {
            "start"
        } else if x > 97.0 {
            "end"
        } else {
            "middle"
        };
        let _ = write!(
            out,
            "<line x1=\"{x:.3}%\" y1=\"{base:.1}\" x2=\"{x:.3}%\" y2=\"{:.1}\" stroke=\"#999\"/>",
            base + 5.0
        );
        let first = if daily { date } else { time };
        let _ = write!(
            out,
            "<text class=\"x-tick\" x=\"{x:.3}%\" y=\"{:.1}\" text-anchor=\"{anchor}\">{first}</text>",
            base + 20.0
        );
        if !daily && date != last_date {
            let _ = write!(
                out,
                "<text class=\"x-date\" x=\"{x:.3}%\" y=\"{:.1}\" text-anchor=\"{anchor}\">{date}</text>",
                base + 38.0
            );
        }
        last_date = date.to_owned();
    }
}

fn client_share_figure(out: &mut String, s: &Summary) {
    out.push_str(
        "<figure id=\"share-by-client\"><figcaption>Share of policy decisions by client</figcaption>",
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
    out.push_str("<div class=\"donut\">");
    out.push_str(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"240\" height=\"240\" viewBox=\"0 0 240 240\" role=\"img\" aria-label=\"Share by client\">",
    );
    let mut offset = 0.0;
    let mut items = Vec::new();
    for (i, (name, count)) in slices.iter().enumerate() {
        let colour = if name == "others" && i == slices.len() - 1 {
            CLIENT_COLOURS[CHART_CLIENTS]
        } else {
            CLIENT_COLOURS[i % CHART_CLIENTS]
        };
        let share = percent(*count, s.records);
        // A circle drawn from the top, clockwise: pathLength 100 makes the
        // dash length the percentage.
        let _ = write!(
            out,
            "<circle class=\"slice\" cx=\"120\" cy=\"120\" r=\"78\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"44\" pathLength=\"100\" stroke-dasharray=\"{share:.3} {:.3}\" stroke-dashoffset=\"{:.3}\" transform=\"rotate(-90 120 120)\"><title>{}: {count} records ({share:.1}%)</title></circle>",
            100.0 - share,
            -offset,
            escape(name)
        );
        offset += share;
        items.push((colour, format!("{name} {count} ({share:.1}%)")));
    }
    out.push_str("</svg>");
    legend(out, &items);
    out.push_str("</div></figure>\n");
}

fn unknown_figure(out: &mut String, s: &Summary) {
    out.push_str(
        "<figure id=\"top-unknown-user-agents\"><figcaption>Top User-Agents the catalog did not recognise (records)</figcaption>",
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
    out.push_str("<div class=\"bars\">");
    for u in top {
        // At most 90% of the row, so the count fits after the bar.
        let w = (u.count as f64 / peak as f64 * 90.0).max(0.3);
        let _ = write!(
            out,
            "<div class=\"label\" title=\"{}\">{}</div><svg xmlns=\"http://www.w3.org/2000/svg\" role=\"img\" aria-label=\"{} records\"><title>{}: {} records, {} .. {}</title><rect class=\"ua-bar\" x=\"0\" y=\"2\" width=\"{w:.2}%\" height=\"16\" fill=\"{UNKNOWN_BAR_COLOUR}\"/><text x=\"{w:.2}%\" dx=\"6\" y=\"15\">{}</text></svg>",
            escape(&u.user_agent),
            escape(&shorten(&u.user_agent, 80)),
            u.count,
            escape(&u.user_agent),
            u.count,
            u.first_seen,
            u.last_seen,
            u.count
        );
    }
    out.push_str("</div></figure>\n");
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

/// The tables after the figures, section by section, in page order.
fn tables(out: &mut String, s: &Summary) {
    role_and_action_tables(out, s);
    client_table(out, s);
    would_reject_tables(out, s);
    rejected_and_flagged_tables(out, s);
    protocol_tables(out, s);
    unknown_user_agent_table(out, s);
    catalog_snippets(out, s);
    over_time_table(out, s);
    not_itemised_note(out, s);
}

/// "Policy decisions by role and action": a row per role and one for all,
/// then the records by mode, by support class and by kind of REGISTER side
/// by side.
fn role_and_action_tables(out: &mut String, s: &Summary) {
    out.push_str("<h2>Policy decisions by role and action</h2>\n");
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
    out.push_str("<div class=\"wide\">");
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
    table(
        out,
        "registers",
        &["REGISTER", "Records"],
        &[false, true],
        &[
            vec!["registrations".to_owned(), s.registers.register.to_string()],
            vec![
                "de-registrations".to_owned(),
                s.registers.unregister.to_string(),
            ],
        ],
    );
    out.push_str("</div>");
}

/// "Clients": a row per client with its share, actions, legs (with
/// `--legs both`) and the versions seen.
fn client_table(out: &mut String, s: &Summary) {
    out.push_str("<h2>Clients</h2>\n");
    let both = s.legs == "both";
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
            if both {
                row.extend(c.by_leg.0.iter().map(|(_, n)| n.to_string()));
            }
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
    let mut header = vec![
        "Client", "Support", "Category", "Records", "Share", "Allow", "Flag", "Reject", "Drop",
    ];
    let mut numeric = vec![false, false, false, true, true, true, true, true, true];
    if both {
        header.extend(["From client", "From registrar"]);
        numeric.extend([true, true]);
    }
    header.push("Versions seen");
    numeric.push(false);
    table(out, "by-client", &header, &numeric, &rows);
}

/// "Monitor mode: what enforcing would change": the count, then the top
/// clients and rules when there is any.
fn would_reject_tables(out: &mut String, s: &Summary) {
    out.push_str("<h2>Monitor mode: what enforcing would change</h2>\n");
    let w = &s.would_reject;
    for sentence in w.sentences() {
        let _ = writeln!(out, "<p>{sentence}</p>");
    }
    if w.total > 0 {
        out.push_str("<div class=\"wide\">");
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
        out.push_str("</div>");
    }
}

/// "Rejected and flagged": the counts, then the top sources, users and
/// workflows when there is any.
fn rejected_and_flagged_tables(out: &mut String, s: &Summary) {
    out.push_str("<h2>Rejected and flagged</h2>\n");
    let r = &s.rejected_and_flagged;
    let whole = r.reject + r.flag;
    let _ = writeln!(
        out,
        "<p>{} rejected, {} flagged by the policy (protocol answers are below, apart).</p>",
        r.reject, r.flag
    );
    if whole > 0 {
        out.push_str("<div class=\"wide\">");
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
        out.push_str("</div>");
    }
}

/// "User-Agents the catalog did not recognise": the top ones with their
/// counts and when they were first and last seen.
fn unknown_user_agent_table(out: &mut String, s: &Summary) {
    out.push_str("<h2>User-Agents the catalog did not recognise</h2>\n");
    let left_out = s.not_itemised.get("unknown_user_agents");
    if left_out > 0 {
        let most = s.not_itemised_per_key_max.get("unknown_user_agents");
        let _ = writeln!(
            out,
            "<p>{} listed, {} records not itemised: the table was full, the most frequent are listed; no User-Agent left out had more than {most} records, and a listed one at most {most} more than shown.</p>",
            s.unknown_user_agents.len(),
            left_out
        );
    }
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
}

/// The catalog entries suggested for the top unknown User-Agents, when
/// there are any.
fn catalog_snippets(out: &mut String, s: &Summary) {
    let snippets: Vec<&str> = s.catalog_snippets.iter().map(|c| c.toml.as_str()).collect();
    if !snippets.is_empty() {
        out.push_str("<h2>Catalog entries for the top unknown User-Agents</h2>\n<p>Paste at the end of the catalog after review, then run <code>sipadmit check-config</code>.</p>\n<pre id=\"catalog-snippets\">");
        out.push_str(&escape(&snippets.join("\n")));
        out.push_str("</pre>\n");
    }
}

/// The records counted but not itemised because a table was full, when
/// there are any, with the most records one key can have among them.
fn not_itemised_note(out: &mut String, s: &Summary) {
    if s.not_itemised.total() == 0 {
        return;
    }
    out.push_str("<h2>Not itemised</h2>\n<p>A table lists at most 10,000 keys (and 4&nbsp;MiB of keys; 100 versions per client). A full table keeps the most frequent: a new key takes the place of the one with the fewest records, whose records stay in every total but are no longer listed. Per table, those records, and the most one key can have among them: a key not listed had at most that many records (a key with more is listed), a listed key at most that many more than its count.</p>\n");
    let rows: Vec<Vec<String>> = s
        .not_itemised
        .0
        .iter()
        .filter(|(_, c)| *c > 0)
        .map(|&(name, c)| {
            vec![
                name.to_owned(),
                c.to_string(),
                s.not_itemised_per_key_max.get(name).to_string(),
            ]
        })
        .collect();
    table(
        out,
        "not-itemised",
        &["Table", "Records", "Per key at most"],
        &[false, true, true],
        &rows,
    );
}

fn protocol_tables(out: &mut String, s: &Summary) {
    out.push_str("<h2>Protocol and capacity answers (not policy decisions)</h2>\n");
    let p = &s.protocol_answers;
    let legs = p
        .by_leg
        .0
        .iter()
        .map(|(n, c)| format!("{n} {c}"))
        .collect::<Vec<_>>()
        .join(", ");
    let _ = writeln!(
        out,
        "<p>{} requests answered or dropped for a protocol or capacity reason ({legs}): malformed, loops, too many hops, flows that failed, the registrar unreachable or busy, timeouts, rate limits, bans. Not counted under the clients, actions and policy rules above.</p>",
        p.total
    );
    if p.total == 0 {
        return;
    }
    let rows: Vec<Vec<String>> = p
        .by_rule
        .iter()
        .take(TOP_ROWS)
        .map(|r| {
            vec![
                r.rule.clone(),
                r.status.map_or("-".to_owned(), |s| s.to_string()),
                r.count.to_string(),
                format!("{:.1}%", percent(r.count, p.total)),
            ]
        })
        .collect();
    out.push_str("<div class=\"wide\">");
    table(
        out,
        "protocol-answers",
        &["Rule", "Status", "Records", "Share"],
        &[false, true, true, true],
        &rows,
    );
    table(
        out,
        "protocol-sources",
        &["Source", "Records", "Share"],
        &[false, true, true],
        &key_rows(&p.sources, p.total),
    );
    out.push_str("</div>");
}

/// The table of the time chart: every bucket, as the plain report has it.
fn over_time_table(out: &mut String, s: &Summary) {
    let o = &s.over_time;
    let _ = writeln!(
        out,
        "<h2>Decisions over time (per {}, UTC)</h2>",
        escape(&o.bucket)
    );
    if o.buckets.is_empty() {
        out.push_str("<p class=\"empty\">No records.</p>\n");
        return;
    }
    let rows: Vec<Vec<String>> = o.buckets.iter().map(TimeBucket::cells).collect();
    table(
        out,
        "over-time",
        &[
            "Start",
            "Policy decisions",
            "Allow",
            "Flag",
            "Reject",
            "Drop",
            "Would reject",
            "Protocol answers",
        ],
        &[false, true, true, true, true, true, true, true],
        &rows,
    );
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
        assert_eq!(escape("x\u{202e}y\u{2066}"), "x\\u{202e}y\\u{2066}");
    }
}
