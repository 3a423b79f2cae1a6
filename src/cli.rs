//! Command line (clap): `run`, `check-config`, `classify`, `report`,
//! `catalog import-cvp`, `probe`.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::policy::Mode;

/// sipadmit: SIP registration admission filter for Response Group client support.
#[derive(Debug, Parser)]
#[command(name = "sipadmit", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the filter in front of a registrar.
    Run(RunArgs),
    /// Validate a config file: exit 0, or exit 1 listing every problem with its key path.
    CheckConfig {
        /// Config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Classify User-Agent strings (arguments, or one per line on stdin).
    Classify {
        /// Config file whose catalog to use (default: the shipped catalog).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
        /// User-Agent values; none reads stdin.
        user_agents: Vec<String>,
    },
    /// Summarise decision logs (files, .gz files, or stdin when none is named).
    Report(ReportArgs),
    /// Send one request through a running sipadmit and print what came
    /// back: status, Warning, ms-diagnostics. Exit 0 when it answers (with
    /// the `--expect`ed status, when given), 1 otherwise.
    Probe(ProbeArgs),
    /// Work with the client catalog.
    Catalog {
        /// What to do with it.
        #[command(subcommand)]
        command: CatalogCommand,
    },
}

/// `sipadmit catalog` subcommands.
#[derive(Debug, Subcommand)]
pub enum CatalogCommand {
    /// Print catalog entries that match the clients of a Lync / Skype for
    /// Business client version policy, with its precedence (export:
    /// `Get-CsClientVersionPolicyRule | Export-Csv` or `| ConvertTo-Json`);
    /// what the catalog cannot express is named on stderr and in the output.
    ImportCvp(ImportCvpArgs),
}

/// `sipadmit catalog import-cvp` arguments.
#[derive(Debug, clap::Args)]
pub struct ImportCvpArgs {
    /// The policy whose rules to import, when the export holds several:
    /// the part of the rules' Identity before the `/`, e.g. `Global` or
    /// `site:Redmond` (case-insensitive).
    #[arg(long, value_name = "SCOPE")]
    pub scope: Option<String>,
    /// The export (JSON or CSV, UTF-8 or UTF-16); `-` reads stdin.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
}

/// `sipadmit probe` arguments.
#[derive(Debug, clap::Args)]
pub struct ProbeArgs {
    /// User-Agent of the request; "" sends none (default:
    /// `sipadmit-probe/<version>`).
    #[arg(long, value_name = "UA")]
    pub ua: Option<String>,
    /// Method: a REGISTER (with `Expires: 0`, so it leaves no binding), an
    /// INVITE without a body (acknowledged; a call it sets up is ended with
    /// a BYE at once), or an OPTIONS.
    #[arg(long, value_enum, ignore_case = true, default_value = "REGISTER")]
    pub method: MethodArg,
    /// To URI, e.g. a workflow `sip:helpdesk@contoso.com` (an INVITE's and
    /// an OPTIONS' Request-URI; a REGISTER's goes to its domain). Default:
    /// `sip:sipadmit-probe@<TARGET address>`.
    #[arg(long, value_name = "URI")]
    pub to: Option<String>,
    /// From URI. Default: the To URI for a REGISTER,
    /// `sip:sipadmit-probe@<To host>` otherwise.
    #[arg(long, value_name = "URI")]
    pub from: Option<String>,
    /// REGISTER Expires, seconds (0 removes the binding the REGISTER names).
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    pub expires: u32,
    /// Exit 0 only when the final answer has this status (200..=699).
    #[arg(long, value_name = "CODE", value_parser = clap::value_parser!(u16).range(200..=699))]
    pub expect: Option<u16>,
    /// Give up this many seconds after starting (decimals allowed,
    /// at most 300).
    #[arg(long, value_name = "SECS", default_value = "5", value_parser = parse_timeout)]
    pub timeout: std::time::Duration,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// PEM roots the certificate of a `tls:` TARGET must chain to
    /// (default: the system's roots).
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// The name a `tls:` TARGET's certificate must carry, also sent as SNI
    /// (default: the TARGET's IP address).
    #[arg(long, value_name = "NAME")]
    pub tls_name: Option<String>,
    /// PEM certificate chain to present to a `tls:` listener that asks for
    /// one (with `--key`).
    #[arg(long, value_name = "FILE", requires = "key")]
    pub cert: Option<PathBuf>,
    /// Its PEM private key.
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,
    /// The sipadmit listener: `udp:IP:PORT`, `tcp:IP:PORT` or `tls:IP:PORT`
    /// (IPv6 as `udp:[::1]:5060`).
    #[arg(value_name = "TARGET", value_parser = parse_target)]
    pub target: crate::config::Endpoint,
}

impl ProbeArgs {
    /// The first of `--ca`, `--tls-name`, `--cert`, `--key` given with a
    /// TARGET that is not `tls:` (they apply to `tls:` targets only: the
    /// probe ignores them and warns).
    pub fn tls_option_without_tls(&self) -> Option<&'static str> {
        if self.target.transport == crate::vocabulary::Transport::Tls {
            return None;
        }
        [
            ("--ca", self.ca.is_some()),
            ("--tls-name", self.tls_name.is_some()),
            ("--cert", self.cert.is_some()),
            ("--key", self.key.is_some()),
        ]
        .into_iter()
        .find_map(|(flag, given)| given.then_some(flag))
    }

    /// The TLS settings the flags give.
    pub fn tls_options(&self) -> crate::probe::TlsOptions {
        crate::probe::TlsOptions {
            ca: self.ca.clone(),
            server_name: self.tls_name.clone(),
            identity: self.cert.clone().zip(self.key.clone()),
        }
    }
}

/// `probe --method` values.
#[derive(Debug, Clone, Copy, ValueEnum)]
#[value(rename_all = "UPPER")]
pub enum MethodArg {
    /// REGISTER.
    Register,
    /// INVITE.
    Invite,
    /// OPTIONS.
    Options,
}

impl From<MethodArg> for crate::probe::ProbeMethod {
    fn from(m: MethodArg) -> Self {
        match m {
            MethodArg::Register => Self::Register,
            MethodArg::Invite => Self::Invite,
            MethodArg::Options => Self::Options,
        }
    }
}

/// `--timeout`: seconds, more than 0 and at most 300.
fn parse_timeout(text: &str) -> Result<std::time::Duration, String> {
    match text.parse::<f64>() {
        Ok(secs) if secs > 0.0 && secs <= 300.0 => Ok(std::time::Duration::from_secs_f64(secs)),
        _ => Err(format!(
            "{text:?}: expected seconds, more than 0 and at most 300"
        )),
    }
}

/// `--since`, `--until`: an RFC 3339 time with its offset.
fn parse_time(text: &str) -> Result<jiff::Timestamp, String> {
    text.parse().map_err(|e| {
        format!("{text:?}: expected an RFC 3339 time with an offset, e.g. 2026-11-27T00:00:00Z or 2026-11-27T01:00:00+01:00 ({e})")
    })
}

/// TARGET: an endpoint as in `--listen`.
fn parse_target(text: &str) -> Result<crate::config::Endpoint, String> {
    text.parse()
}

/// `sipadmit report` arguments.
#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// Count records from this time on (inclusive), RFC 3339, e.g. 2026-11-27T00:00:00Z.
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub since: Option<jiff::Timestamp>,
    /// Count records before this time (exclusive), RFC 3339.
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub until: Option<jiff::Timestamp>,
    /// Print one JSON object instead of tables.
    #[arg(long, conflicts_with = "html")]
    pub json: bool,
    /// Write a self-contained HTML page to FILE (created 0640; `-`:
    /// stdout) instead of printing tables.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
    /// Config file whose catalog reads client versions from User-Agents
    /// (default: the shipped catalog).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Which policy records to count: `once` counts each call once per
    /// client (the client's leg; the registrar's leg only when it carries
    /// a decision the client's leg did not, such as an agent offer);
    /// `both` counts the decisions of both legs.
    #[arg(long, value_enum, default_value = "once")]
    pub legs: LegsArg,
    /// Decision logs, plain or gzip (logrotate's); `-` or none reads stdin.
    #[arg(value_name = "LOG")]
    pub logs: Vec<PathBuf>,
}

/// `report --legs` values.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LegsArg {
    /// Each call once per client.
    Once,
    /// Both legs of each call.
    Both,
}

impl From<LegsArg> for crate::report::Legs {
    fn from(l: LegsArg) -> Self {
        match l {
            LegsArg::Once => Self::Once,
            LegsArg::Both => Self::Both,
        }
    }
}

/// `sipadmit run` arguments.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Config file.
    #[arg(long, short)]
    pub config: PathBuf,
    /// Listener `udp:IP:PORT`, `tcp:IP:PORT` or `tls:IP:PORT` (repeatable; replaces `proxy.listen`).
    #[arg(long)]
    pub listen: Vec<String>,
    /// Registrar `udp:IP:PORT`, `tcp:IP:PORT` or `tls:IP:PORT` (replaces `proxy.upstream`).
    #[arg(long)]
    pub upstream: Option<String>,
    /// `enforce` or `monitor` (replaces `proxy.mode`).
    #[arg(long, value_enum)]
    pub mode: Option<ModeArg>,
    /// Decision log path, `-` for stdout (replaces `proxy.decision_log`).
    #[arg(long)]
    pub decision_log: Option<String>,
    /// Admin HTTP listener `IP:PORT` serving /metrics, /healthz and /readyz
    /// (replaces `admin.listen`; off when neither is given).
    #[arg(long, value_name = "IP:PORT")]
    pub admin: Option<String>,
}

/// `--mode` values.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ModeArg {
    /// Answer rejects.
    Enforce,
    /// Relay rejects flagged `would_reject`.
    Monitor,
}

impl From<ModeArg> for Mode {
    fn from(m: ModeArg) -> Self {
        match m {
            ModeArg::Enforce => Self::Enforce,
            ModeArg::Monitor => Self::Monitor,
        }
    }
}

// === classify output ===

use crate::classify::Classification;

/// One `classify --json` line: at least user_agent, client, product,
/// version, category, support and roles.
pub fn classification_json(user_agent: &str, c: &Classification<'_>) -> String {
    serde_json::json!({
        "user_agent": user_agent,
        "client": c.client.id,
        "product": c.client.name,
        "version": c.version.map(|v| v.to_string()),
        "category": c.client.category.as_str(),
        "support": c.client.support.as_str(),
        "roles": c.client.roles.iter().map(|r| r.as_str()).collect::<Vec<_>>(),
        "rule": c.rule,
    })
    .to_string()
}

/// The header of the `classify` table.
pub const TABLE_HEADER: [&str; 6] = [
    "CLIENT",
    "VERSION",
    "CATEGORY",
    "SUPPORT",
    "RULE",
    "USER-AGENT",
];

/// One row of the `classify` table; the User-Agent with its control
/// characters shown escaped (a TAB would break the columns, an ESC would
/// drive the terminal).
pub fn classification_row(user_agent: &str, c: &Classification<'_>) -> [String; 6] {
    [
        c.client.id.clone(),
        c.version.map_or_else(|| "-".to_owned(), |v| v.to_string()),
        c.client.category.as_str().to_owned(),
        c.client.support.as_str().to_owned(),
        c.rule.to_owned(),
        crate::terminal_text::terminal_safe(user_agent).into_owned(),
    ]
}

/// Render rows as an aligned table (last column unpadded).
pub fn render_table(rows: &[[String; 6]]) -> String {
    let mut widths = [0usize; 6];
    for row in std::iter::once(&TABLE_HEADER.map(str::to_owned)).chain(rows) {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&TABLE_HEADER.map(str::to_owned)).chain(rows) {
        for (i, cell) in row.iter().enumerate() {
            if i == 5 {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        out.push('\n');
    }
    out
}
