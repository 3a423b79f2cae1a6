//! Writes a realistic decision log: what `sipadmit run` writes (each line a
//! [`DecisionRecord`] serialized the way the log writer does), for trying
//! and measuring `sipadmit report` on logs of any size.
//!
//! ```sh
//! cargo run --release --example make_decision_log -- --size-mb 300 > /tmp/decisions.log
//! cargo run --release --example make_decision_log -- --records 1000 --days 1 --seed 7
//! ```
//!
//! The mix: Lync and Skype for Business desktops registering and calling
//! workflows (several versions), Lync Phone Edition, mobile clients
//! registering and being rejected as callers and agents, Response Group
//! agent offers, third-party softphones flagged, scanners dropped, a few
//! dozen User-Agents the catalog does not know, some without a User-Agent,
//! and a monitor-mode stretch (the first fifth of the span). Addresses are
//! from the documentation ranges (192.0.2.0/24, 198.51.100.0/24,
//! 203.0.113.0/24, 2001:db8::/32). Deterministic for a given seed.

use std::borrow::Cow;
use std::io::{BufWriter, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use clap::Parser;
use jiff::{SignedDuration, Timestamp};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sipadmit::classify::{Catalog, Support};
use sipadmit::config::SHIPPED_CATALOG;
use sipadmit::observe::decision_log::{DecisionKind, Leg};
use sipadmit::observe::DecisionRecord;
use sipadmit::policy::{Action, Mode, SessionRole};
use sipadmit::transport::Transport;

/// Write a synthetic sipadmit decision log to stdout.
#[derive(Parser)]
struct Args {
    /// Number of records (default: 10,000 unless --size-mb is given).
    #[arg(long)]
    records: Option<u64>,
    /// Write records until the log is at least this many MiB.
    #[arg(long)]
    size_mb: Option<u64>,
    /// Days the records span.
    #[arg(long, default_value_t = 7)]
    days: u64,
    /// First record's time.
    #[arg(long, default_value = "2026-11-01T00:00:00Z")]
    start: Timestamp,
    /// Random seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

const DESKTOPS: &[&str] = &[
    "UCCAPI/15.0.4481.1000 OC/15.0.4481.1000 (Microsoft Lync)",
    "UCCAPI/15.0.4727.1000 OC/15.0.4727.1001 (Microsoft Lync)",
    "UCCAPI/15.0.5023.1000 OC/15.0.5023.1000 (Skype for Business)",
    "UCCAPI/16.0.4678.1000 OC/16.0.4678.1000 (Skype for Business)",
    "UCCAPI/16.0.11328.20156 OC/16.0.11328.20156 (Skype for Business)",
    "UCCAPI/4.0.7577.4356 OC/4.0.7577.4356 (Microsoft Lync 2010)",
    "CPE/4.0.7577.4455 OCPhone/4.0.7577.4455 (Microsoft Lync 2010 (Phone Edition))",
];
const MOBILES: &[&str] = &[
    "RTCC/7.0.0.0 UCWA/7.0.0.0 AndroidLync/6.25.0.27 (Nexus 5 Android 6.0.1)",
    "RTCC/7.0.0.0 UCWA/7.0.0.0 iPhoneLync/6.26.0.11 (iPhone iOS 12.1)",
    "RTCC/5.0.0.0 McxService/5.0.0.0 iPhoneLync/5.0.0.0",
];
const THIRD_PARTY: &[&str] = &[
    "Zoiper rv2.10.2.0",
    "Linphone/5.1.65 (belle-sip/5.1.55)",
    "baresip v1.0.0 (x86_64/linux)",
    "MicroSIP/3.21.3",
    "Bria 6 release 6.5.4 stamp 104016",
    "Yealink SIP-T46S 66.86.0.15",
];
const SCANNERS: &[&str] = &[
    "friendly-scanner",
    "sipvicious",
    "sipcli/v1.8",
    "VaxSIPUserAgent/3.1",
];
const UNKNOWN_PRODUCTS: &[&str] = &[
    "AcmeSoftphone",
    "Contoso-Desk",
    "Fabrikam.Phone",
    "NorthwindVoIP",
    "TailspinSIP",
    "WingtipClient",
    "ProseWare-UA",
    "LitwareCall",
    "AdventureWorksPhone",
    "Woodgrove-SIP",
    "BlueYonder",
    "Alpine-Ski-UA",
    "HumongousIns",
    "CohoWinery",
    "TreyResearch",
    "LucernePub",
    "MargiesTravel",
    "WideWorldImp",
];
const RGS: &str = "RTCC/5.0.0.0 Response_Group_Service/5.0.0.0";
const WORKFLOWS: &[&str] = &[
    "sip:helpdesk@contoso.com",
    "sip:sales@contoso.com",
    "sip:support@contoso.com",
    "sip:hr-line@contoso.com",
];

struct Generator<'c> {
    rng: StdRng,
    catalog: &'c Catalog,
}

impl Generator<'_> {
    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        // Skewed: earlier entries are more common.
        let i = (self.rng.gen::<f64>().powi(2) * from.len() as f64) as usize;
        from[i.min(from.len() - 1)]
    }

    fn source(&mut self, far: bool) -> SocketAddr {
        let ip = if far {
            IpAddr::V4(Ipv4Addr::new(203, 0, 113, self.rng.gen_range(1..255)))
        } else if self.rng.gen_bool(0.1) {
            IpAddr::V6(Ipv6Addr::new(
                0x2001,
                0xdb8,
                0,
                0,
                0,
                0,
                0,
                self.rng.gen_range(1..500),
            ))
        } else if self.rng.gen_bool(0.5) {
            IpAddr::V4(Ipv4Addr::new(192, 0, 2, self.rng.gen_range(1..255)))
        } else {
            IpAddr::V4(Ipv4Addr::new(198, 51, 100, self.rng.gen_range(1..255)))
        };
        SocketAddr::new(
            ip,
            if far {
                5060
            } else {
                self.rng.gen_range(1024..65535)
            },
        )
    }

    fn record(&mut self, ts: Timestamp, mode: Mode) -> DecisionRecord {
        let user = format!("sip:user{}@contoso.com", self.rng.gen_range(1..2000));
        let roll: f64 = self.rng.gen();
        let (ua, role, far): (Option<String>, SessionRole, bool) = if roll < 0.50 {
            let role = if self.rng.gen_bool(0.2) {
                SessionRole::AgentRegistration
            } else {
                SessionRole::None
            };
            (Some(self.pick(DESKTOPS).to_owned()), role, false)
        } else if roll < 0.62 {
            (
                Some(self.pick(DESKTOPS).to_owned()),
                SessionRole::Caller,
                false,
            )
        } else if roll < 0.70 {
            (
                Some(self.pick(MOBILES).to_owned()),
                SessionRole::None,
                false,
            )
        } else if roll < 0.75 {
            let role = if self.rng.gen_bool(0.5) {
                SessionRole::Caller
            } else {
                SessionRole::AgentRegistration
            };
            (Some(self.pick(MOBILES).to_owned()), role, false)
        } else if roll < 0.83 {
            (Some(RGS.to_owned()), SessionRole::AgentOffer, false)
        } else if roll < 0.90 {
            let role = if self.rng.gen_bool(0.3) {
                SessionRole::Caller
            } else {
                SessionRole::None
            };
            (Some(self.pick(THIRD_PARTY).to_owned()), role, false)
        } else if roll < 0.94 {
            (
                Some(self.pick(SCANNERS).to_owned()),
                SessionRole::None,
                true,
            )
        } else if roll < 0.99 {
            let product = self.pick(UNKNOWN_PRODUCTS);
            let ua = format!(
                "{product}/{}.{}",
                self.rng.gen_range(1..4),
                self.rng.gen_range(0..10)
            );
            (Some(ua), SessionRole::None, false)
        } else {
            (None, SessionRole::None, false)
        };
        let catalog = self.catalog;
        let classified = catalog.classify(ua.as_deref().map(str::as_bytes));
        let mut client = classified.client;
        if role == SessionRole::AgentOffer {
            // An offer is decided by the client that registered the agent.
            let agent_ua = if self.rng.gen_bool(0.15) {
                self.pick(MOBILES)
            } else {
                self.pick(DESKTOPS)
            };
            client = catalog.classify(Some(agent_ua.as_bytes())).client;
        }
        let (mut action, rule) = match (client.support, role) {
            (Support::Scanner, _) => (Action::Drop, "scanner"),
            (Support::Supported | Support::Service, _) => (Action::Allow, "supported"),
            (_, SessionRole::None) => (Action::Allow, "no-session"),
            (Support::Unsupported, SessionRole::Caller) => (Action::Reject, "caller.unsupported"),
            (Support::Unsupported, SessionRole::AgentOffer) => {
                (Action::Reject, "agent-offer.unsupported")
            }
            (Support::Unsupported, _) => (Action::Reject, "agent-registration.unsupported"),
            (_, SessionRole::Caller) => (Action::Flag, "caller.third-party"),
            (_, SessionRole::AgentOffer) => (Action::Flag, "agent-offer.third-party"),
            (_, _) => (Action::Flag, "agent-registration.third-party"),
        };
        let mut would_reject = false;
        if action == Action::Reject && mode == Mode::Monitor {
            action = Action::Flag;
            would_reject = true;
        }
        let status = (action == Action::Reject).then_some(match role {
            SessionRole::AgentOffer => 480,
            _ => 403,
        });
        let (method, request_uri, to) = match role {
            SessionRole::Caller => {
                let w = self.pick(WORKFLOWS).to_owned();
                ("INVITE", w.clone(), w)
            }
            SessionRole::AgentOffer => ("INVITE", user.clone(), user.clone()),
            _ => ("REGISTER", "sip:contoso.com".to_owned(), user.clone()),
        };
        let from = if role == SessionRole::AgentOffer {
            self.pick(WORKFLOWS).to_owned()
        } else {
            user.clone()
        };
        DecisionRecord {
            ts,
            transport: if self.rng.gen_bool(0.7) {
                Transport::Tcp
            } else {
                Transport::Udp
            },
            source: self.source(far),
            local: None,
            leg: Some(Leg::default_for(role)),
            method: method.to_owned(),
            call_id: format!("{:016x}@{}", self.rng.gen::<u64>(), "contoso.com"),
            from,
            to,
            request_uri,
            user_agent: ua,
            client: client.id.clone(),
            sender_client: classified.client.id.clone(),
            category: client.category,
            support: client.support,
            role,
            kind: Some(DecisionKind::of_rule(rule)),
            action,
            rule: Cow::Borrowed(rule),
            client_rule: classified.rule.to_owned(),
            status,
            mode,
            would_reject,
            generation: 1,
            spiral: false,
            after_challenge: false,
            unregister: false,
            undelivered: false,
        }
    }
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let records = args.records.unwrap_or(if args.size_mb.is_some() {
        u64::MAX
    } else {
        10_000
    });
    let bytes_wanted = args.size_mb.map_or(u64::MAX, |mb| mb << 20);
    // Records per size: about 560 bytes each, to spread them over the span.
    let expected = records.min(bytes_wanted / 560).max(1);
    let span_ms = (args.days * 86_400_000) as i64;
    let step_ms = (span_ms / expected as i64).max(1);
    let catalog = Catalog::from_toml_str(SHIPPED_CATALOG).expect("shipped catalog");
    let mut generator = Generator {
        rng: StdRng::seed_from_u64(args.seed),
        catalog: &catalog,
    };
    let stdout = std::io::stdout().lock();
    let mut out = BufWriter::with_capacity(1 << 20, stdout);
    let mut line = Vec::with_capacity(1024);
    let (mut written, mut bytes) = (0u64, 0u64);
    let mut ts = args.start;
    while written < records && bytes < bytes_wanted {
        let elapsed = ts.duration_since(args.start).as_millis() as i64;
        let mode = if elapsed < span_ms / 5 {
            Mode::Monitor
        } else {
            Mode::Enforce
        };
        let record = generator.record(ts, mode);
        line.clear();
        serde_json::to_writer(&mut line, &record).map_err(std::io::Error::other)?;
        line.push(b'\n');
        out.write_all(&line)?;
        bytes += line.len() as u64;
        written += 1;
        let jitter = generator.rng.gen_range(0..=2 * step_ms);
        ts = ts
            .checked_add(SignedDuration::from_millis(jitter))
            .unwrap_or(ts);
    }
    out.flush()
}
