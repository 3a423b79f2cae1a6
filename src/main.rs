//! The `sipadmit` binary: parse the command line, set up logging, dispatch.

use std::io::{BufRead, Write};
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow, Signal};
use sipadmit::classify::Catalog;
use sipadmit::cli::{self, Cli, Command};
use sipadmit::config::{Config, Overrides, SHIPPED_CATALOG};

fn main() -> ExitCode {
    // SIGHUP waits, blocked, from the first line until `run` has its
    // handler in place (its default action would end the process:
    // logrotate's reload racing a restart); other commands take it as
    // they always did, once the command line is read.
    let masked = hangup_mask(SigmaskHow::SIG_BLOCK);
    let cli = Cli::parse();
    let masked = match cli.command {
        Command::Run(_) => masked,
        // Whether the mask could be set or not, these go on as before.
        _ => masked
            .and_then(|()| hangup_mask(SigmaskHow::SIG_UNBLOCK))
            .or(Ok(())),
    };
    match masked.and_then(|()| dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sipadmit: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Block or unblock SIGHUP for this thread (and the threads it starts).
fn hangup_mask(how: SigmaskHow) -> anyhow::Result<()> {
    let mut hangup = SigSet::empty();
    hangup.add(Signal::SIGHUP);
    pthread_sigmask(how, Some(&hangup), None).context("masking SIGHUP")
}

/// `sipadmit run`: start the filter and serve until it is stopped.
/// SIGHUP is blocked when this begins (`main`).
fn run_command(args: cli::RunArgs) -> anyhow::Result<ExitCode> {
    // Held until this returns, after the runtime has stopped: buffered
    // console lines are written then.
    let _console = sipadmit::observe::console::init();
    let overrides = Overrides {
        listen: args.listen,
        upstream: args.upstream,
        mode: args.mode.map(Into::into),
        decision_log: args.decision_log,
        admin: args.admin,
    };
    // One event loop: the proxy core is a few microseconds per message,
    // and a single thread avoids cross-thread wake-ups between the
    // socket tasks and the dispatcher (measured with scripts/load: 82 to 63 µs
    // of CPU per relayed REGISTER).
    let runtime = sipadmit::app::event_loop().context("starting the async runtime")?;
    // Before the configuration is read: a SIGHUP during the start is a
    // reload once it runs. SIGTERM and SIGINT still end a start at once.
    let reload = {
        let _context = runtime.enter();
        sipadmit::app::ReloadSignals::install().context("installing the signal handlers")?
    };
    hangup_mask(SigmaskHow::SIG_UNBLOCK)?;
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        config = %args.config.display(),
        "sipadmit starting"
    );
    let config = Config::load(&args.config, &overrides)?;
    tracing::info!(
        config = %args.config.display(),
        catalog = %config.runtime.catalog_source,
        "configuration loaded"
    );
    runtime.block_on(sipadmit::app::run(config, reload))?;
    Ok(ExitCode::SUCCESS)
}

fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run(args) => run_command(args),
        Command::CheckConfig { config } => {
            // An error goes up to main, which prints it with its causes once and exits 1.
            let c = Config::load(&config, &Overrides::default())?;
            sipadmit::app::check_on_this_host(&c)?;
            println!(
                "{}: ok ({} products in catalog {}, {} workflows, mode {})",
                config.display(),
                c.runtime.catalog.products().count(),
                c.runtime.catalog_source,
                c.runtime.sessions.workflows.len(),
                c.runtime.policy.mode.as_str()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Classify {
            config,
            json,
            user_agents,
        } => classify(config, json, user_agents),
        Command::Report(args) => report(args),
        Command::Probe(args) => probe(&args),
        Command::Catalog {
            command: cli::CatalogCommand::ImportCvp(args),
        } => import_cvp(&args),
    }
}

/// `sipadmit probe`: one request, its answer on stdout; exit 0 when it
/// answered as expected, 1 (with the reason on stderr) otherwise. The TLS
/// files of a `tls:` TARGET are checked before anything is sent; TLS flags
/// with another TARGET are ignored with a warning (a monitoring template
/// may pass them to every target).
fn probe(args: &cli::ProbeArgs) -> anyhow::Result<ExitCode> {
    use sipadmit::probe::{self, Outcome, ProbeRequest, TlsClient};
    use sipadmit::vocabulary::Transport;
    let target = args.target;
    if let Some(flag) = args.tls_option_without_tls() {
        eprintln!("sipadmit: warning: {flag} applies to tls: targets only: ignored for {target}");
    }
    let host = match target.addr {
        std::net::SocketAddr::V4(a) => a.to_string(),
        std::net::SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
    };
    let request = ProbeRequest::new(
        args.method.into(),
        &host,
        args.to.as_deref(),
        args.from.as_deref(),
        args.ua.as_deref(),
        args.expires,
        rand::random(),
    )?;
    let tls = match target.transport {
        Transport::Tls => Some(TlsClient::new(&args.tls_options())?),
        Transport::Udp | Transport::Tcp => None,
    };
    let outcome = Outcome {
        target,
        method: request.method,
        user_agent: request.user_agent.clone(),
        answer: probe::exchange(target, tls.as_ref(), &request, args.timeout)
            .map_err(|e| e.to_string()),
        expected: args.expect,
    };
    let report = if args.json {
        format!("{}\n", outcome.json())
    } else {
        outcome.text()
    };
    std::io::stdout().lock().write_all(report.as_bytes())?;
    Ok(match outcome.failure() {
        None => ExitCode::SUCCESS,
        Some(reason) => {
            eprintln!("sipadmit: probe: {reason}");
            ExitCode::FAILURE
        }
    })
}

/// `sipadmit catalog import-cvp`: entries on stdout, every note on stderr.
fn import_cvp(args: &cli::ImportCvpArgs) -> anyhow::Result<ExitCode> {
    use sipadmit::client_version_policy::{self as cvp, ClientVersionPolicy};
    let (bytes, name) = if args.file.as_os_str() == "-" {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin().lock(), &mut bytes)
            .context("reading the export from stdin")?;
        (bytes, "-".to_owned())
    } else {
        let bytes =
            std::fs::read(&args.file).with_context(|| format!("{}", args.file.display()))?;
        (bytes, args.file.display().to_string())
    };
    let rules = cvp::read_rules(&bytes).with_context(|| name.clone())?;
    let policy =
        ClientVersionPolicy::new(rules, args.scope.as_deref()).with_context(|| name.clone())?;
    let shipped = Catalog::from_toml_str(SHIPPED_CATALOG).context("built-in catalog")?;
    let import = cvp::translate(&policy, &name, &shipped);
    let mut out = std::io::stdout().lock();
    out.write_all(import.toml.as_bytes())
        .and_then(|()| out.flush())
        .context("writing the catalog entries")?;
    let mut err = std::io::stderr().lock();
    for note in &import.notes {
        let warning = match note.kind {
            cvp::NoteKind::NotSupported => "warning: ",
            _ => "",
        };
        writeln!(err, "sipadmit: {name}: {warning}{note}")?;
    }
    writeln!(
        err,
        "sipadmit: {name}: note: {}",
        cvp::translate::MAPPING_NOTE
    )?;
    writeln!(
        err,
        "sipadmit: {name}: {} rules, {} imported, {} not imported",
        policy.rules.len(),
        import.imported,
        import.not_imported
    )?;
    Ok(ExitCode::SUCCESS)
}

/// `sipadmit classify`: a table, or one JSON object per User-Agent.
fn classify(
    config: Option<std::path::PathBuf>,
    json: bool,
    user_agents: Vec<String>,
) -> anyhow::Result<ExitCode> {
    let catalog = match config {
        Some(path) => Config::load(&path, &Overrides::default())?.runtime.catalog,
        None => Catalog::from_toml_str(SHIPPED_CATALOG).context("built-in catalog")?,
    };
    let inputs: Vec<String> = if user_agents.is_empty() {
        std::io::stdin()
            .lock()
            .lines()
            .collect::<Result<_, _>>()
            .context("reading User-Agents from stdin")?
    } else {
        user_agents
    };
    let mut out = std::io::stdout().lock();
    if json {
        for ua in &inputs {
            let c = catalog.classify(Some(ua.as_bytes()));
            writeln!(out, "{}", cli::classification_json(ua, &c))?;
        }
    } else {
        let rows: Vec<_> = inputs
            .iter()
            .map(|ua| cli::classification_row(ua, &catalog.classify(Some(ua.as_bytes()))))
            .collect();
        out.write_all(cli::render_table(&rows).as_bytes())?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Write `bytes` to `path`, truncating it; a new file is created `0640`
/// like the decision log (the report names users and addresses).
fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.create(true).write(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o640);
    options.open(path)?.write_all(bytes)
}

/// `sipadmit report`: read every log into one tally, then print or write it.
fn report(args: cli::ReportArgs) -> anyhow::Result<ExitCode> {
    use sipadmit::report::{self, Tally, TimeRange};
    let catalog = match &args.config {
        Some(path) => Config::load(path, &Overrides::default())?.runtime.catalog,
        None => Catalog::from_toml_str(SHIPPED_CATALOG).context("built-in catalog")?,
    };
    let range = TimeRange::new(args.since, args.until)?;
    let (paths, repeated) = report::distinct_logs(&args.logs);
    for path in repeated {
        eprintln!(
            "sipadmit: report: warning: {} is named more than once: read once",
            sipadmit::terminal_text::terminal_safe(&path.display().to_string())
        );
    }
    let logs = report::open_logs(&paths)?;
    let names: Vec<String> = logs.iter().map(|l| l.name().to_owned()).collect();
    let mut tally = Tally::new(&catalog, range).counting(args.legs.into());
    for log in logs {
        if let Some(damage) = report::read_log(log, &mut tally)? {
            eprintln!("sipadmit: report: warning: {damage}");
        }
    }
    for m in tally.malformed_logs() {
        eprintln!(
            "sipadmit: report: warning: {}: {} malformed line(s) skipped (not decision records), the first at line {}",
            sipadmit::terminal_text::terminal_safe(&m.log),
            m.lines,
            m.first_line
        );
    }
    let mut summary = tally.finish();
    summary.logs = names;
    let text = if let Some(path) = args.html.as_ref().filter(|p| p.as_os_str() != "-") {
        write_private(path, report::html::render(&summary).as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
        return Ok(ExitCode::SUCCESS);
    } else if args.html.is_some() {
        report::html::render(&summary)
    } else if args.json {
        let mut json = serde_json::to_string_pretty(&summary)?;
        json.push('\n');
        json
    } else {
        report::plain::render(&summary)
    };
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        // `sipadmit report | head`: the reader has what it wanted.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        result => {
            result.context("writing the report")?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
