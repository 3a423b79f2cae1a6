//! The admin listener of the real binary (`sipadmit run --admin`) under a
//! connection flood from one address (issue "edge holes", item 5), and the
//! warning for an admin listener on a non-loopback address:
//! - 20 silent and 20 trickling connections (one byte every 500 ms) from
//!   127.0.0.5, each opened again 250 ms after sipadmit closes it, while
//!   127.0.0.6 asks `/healthz` and `/metrics` 10 times each: every answer is
//!   200 within 1 s (the success rate is printed before the assertion), and
//!   `/metrics` counts the connections refused at the per-source cap;
//! - 8 keep-alive connections from 127.0.0.5 asking `/metrics` back to back
//!   for about 3 s: `/healthz` from 127.0.0.6 answers 200 within 1 s at
//!   each of 10 tries, and `/metrics` still answers;
//! - a kept-alive connection left idle is closed 2 s after its answer, and
//!   one asking every second is closed after 10 s, once its request in
//!   progress is answered; `/metrics` counts both;
//! - `--admin 0.0.0.0:0` logs the no-authentication warning, and does not
//!   with `[admin] allow_remote = true`, nor on loopback.
//!
//! Every socket is on 127.0.0.0/8; the flood stops when the tries are done
//! (at most about 30 s of it).

mod common {
    pub mod binary;
}

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::binary::{field, Sipadmit};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;

const CONFIG: &str = r#"
[response_group]
workflows = ["sip:helpdesk@contoso.com"]
agents = ["sip:agent-*@contoso.com"]
"#;

/// The flooding address.
const FLOODER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 5));
/// The address of the orchestrator and the scraper.
const PROBER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 6));
/// Silent and trickling flood connections (each).
const FLOOD_EACH: usize = 20;
/// Tries of `/healthz` and of `/metrics` (each).
const TRIES: usize = 10;
/// What every try must take at most.
const TRY_BOUND: Duration = Duration::from_secs(1);
/// A trickling connection's pace.
const TRICKLE_EVERY: Duration = Duration::from_millis(500);
/// Pause before a flood connection is opened again once closed.
const REOPEN_AFTER: Duration = Duration::from_millis(250);

fn config_file(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("sipadmit.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// `sipadmit run` on UDP 127.0.0.1:0 toward a UDP upstream nobody answers,
/// with `--admin admin`; the process and the admin address it logged.
fn start(config: &Path, admin: &str) -> (Sipadmit, SocketAddr) {
    let upstream = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let upstream = format!("udp:{}", upstream.local_addr().unwrap());
    let mut process = Sipadmit::spawn(
        Command::new(env!("CARGO_BIN_EXE_sipadmit"))
            .args(["run", "--config", config.to_str().unwrap()])
            .args(["--listen", "udp:127.0.0.1:0"])
            .args(["--upstream", &upstream])
            .args(["--admin", admin])
            .args(["--decision-log", "-"])
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null()),
    );
    let line = process.wait_for("admin listening");
    let addr = field(&line, "addr").parse().unwrap();
    (process, addr)
}

/// A TCP connection to `to` from `source` (port chosen by the kernel).
async fn connect_from(source: IpAddr, to: SocketAddr) -> io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(to).await
}

/// One flood connection, over and over until `stop`: open it from
/// [`FLOODER`], then send nothing (or, with `trickle`, one byte of a
/// never-ending request head every [`TRICKLE_EVERY`]) until sipadmit closes
/// it; open it again [`REOPEN_AFTER`] later. Counts the connections opened.
async fn flood_connection(
    admin: SocketAddr,
    trickle: bool,
    opened: Arc<AtomicU32>,
    stop: CancellationToken,
) {
    let head = b"GET /metrics HTTP/1.1\r\nHost: sipadmit\r\nX-Trickle: ";
    while !stop.is_cancelled() {
        let Ok(mut stream) = connect_from(FLOODER, admin).await else {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(REOPEN_AFTER) => continue,
            }
        };
        opened.fetch_add(1, Ordering::Relaxed);
        let mut sent = 0;
        let mut buf = [0u8; 512];
        let mut tick = tokio::time::interval(TRICKLE_EVERY);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                read = stream.read(&mut buf) => match read {
                    // Closed (or reset) by sipadmit.
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                },
                _ = tick.tick(), if trickle => {
                    let byte = head.get(sent).copied().unwrap_or(b'a');
                    sent += 1;
                    if stream.write_all(&[byte]).await.is_err() {
                        break;
                    }
                }
            }
        }
        drop(stream);
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(REOPEN_AFTER) => {}
        }
    }
}

/// `GET path` from [`PROBER`] with `Connection: close`, all of it (connect,
/// request, the whole response) within [`TRY_BOUND`]: the status and the
/// body, or why not.
async fn get_from_prober(admin: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let exchange = async {
        let mut stream = connect_from(PROBER, admin).await?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        io::Result::Ok(String::from_utf8_lossy(&response).into_owned())
    };
    let response = match tokio::time::timeout(TRY_BOUND, exchange).await {
        Ok(Ok(response)) => response,
        Ok(Err(e)) => return Err(format!("failed: {e}")),
        Err(_) => return Err(format!("no answer within {} ms", TRY_BOUND.as_millis())),
    };
    let Some((head, body)) = response.split_once("\r\n\r\n") else {
        return Err(format!("no HTTP response: {response:?}"));
    };
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status in {head:?}"))?;
    Ok((status, body.to_owned()))
}

/// The value of the sample line starting with `series ` (0 when absent).
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_and_metrics_answer_within_a_second_under_a_silent_and_trickling_flood() {
    let dir = tempfile::tempdir().unwrap();
    let (mut process, admin) = start(&config_file(dir.path(), CONFIG), "127.0.0.1:0");
    let admin = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), admin.port());
    assert!(
        !process.stderr_so_far().contains("allow_remote"),
        "no warning on loopback"
    );

    let stop = CancellationToken::new();
    let opened = Arc::new(AtomicU32::new(0));
    let mut flood = tokio::task::JoinSet::new();
    for i in 0..2 * FLOOD_EACH {
        flood.spawn(flood_connection(
            admin,
            i % 2 == 1,
            opened.clone(),
            stop.clone(),
        ));
    }
    // Let the flood take hold (on the unfixed listener: fill every slot).
    tokio::time::sleep(Duration::from_secs(1)).await;

    let started = Instant::now();
    let mut answered = [0usize; 2];
    let mut failures = Vec::new();
    let mut slowest = Duration::ZERO;
    for i in 0..TRIES {
        for (n, path) in ["/healthz", "/metrics"].into_iter().enumerate() {
            let at = Instant::now();
            let got = get_from_prober(admin, path).await;
            slowest = slowest.max(at.elapsed());
            match got {
                Ok((200, _)) => answered[n] += 1,
                Ok((status, body)) => failures.push(format!("try {i} {path}: {status} {body}")),
                Err(why) => failures.push(format!("try {i} {path}: {why}")),
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    let flood_secs = started.elapsed().as_secs_f64() + 1.0;
    stop.cancel();
    while flood.join_next().await.is_some() {}
    let opened = opened.load(Ordering::Relaxed);
    println!(
        "admin under flood ({opened} flood connections from {FLOODER} in {flood_secs:.1} s): \
         /healthz {}/{TRIES}, /metrics {}/{TRIES} answered 200 within {} ms (slowest try {} ms)",
        answered[0],
        answered[1],
        TRY_BOUND.as_millis(),
        slowest.as_millis()
    );
    assert!(
        failures.is_empty(),
        "{failures:#?}\n{}",
        process.stderr_so_far()
    );

    // The refusals at the per-source cap are counted, the flood's
    // connections are gone, and the listener is still the same.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, text) = get_from_prober(admin, "/metrics").await.unwrap();
    assert_eq!(status, 200);
    let refused = sample(
        &text,
        "sipadmit_admin_connections_refused_total{reason=\"per_source\"}",
    );
    assert!(refused > 0.0, "{text}");
    assert_eq!(
        sample(
            &text,
            "sipadmit_admin_connections_refused_total{reason=\"total\"}"
        ),
        0.0
    );
    assert!(
        sample(
            &text,
            "sipadmit_admin_connections_closed_total{reason=\"header_timeout\"}"
        ) > 0.0,
        "{text}"
    );
    // This scrape's own connection, maybe the last flood ones closing.
    assert!(sample(&text, "sipadmit_admin_connections") >= 1.0, "{text}");
    assert!(
        process.stderr_so_far().contains("admin connection refused"),
        "the refusals are logged"
    );
    process.terminate();
}

/// `/metrics` over and over on one keep-alive connection from [`FLOODER`]
/// until `stop` or the connection ends; the answers read whole.
async fn scrape_back_to_back(admin: SocketAddr, scrapes: Arc<AtomicU32>, stop: CancellationToken) {
    let Ok(stream) = connect_from(FLOODER, admin).await else {
        return;
    };
    let mut stream = BufReader::new(stream);
    let scrape = async {
        loop {
            stream
                .get_mut()
                .write_all(b"GET /metrics HTTP/1.1\r\nHost: sipadmit\r\n\r\n")
                .await?;
            let mut length = 0;
            loop {
                let mut line = String::new();
                if stream.read_line(&mut line).await? == 0 {
                    return io::Result::Ok(());
                }
                let line = line.trim_end().to_ascii_lowercase();
                if line.is_empty() {
                    break;
                }
                if let Some(value) = line.strip_prefix("content-length:") {
                    length = value.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; length];
            stream.read_exact(&mut body).await?;
            scrapes.fetch_add(1, Ordering::Relaxed);
        }
    };
    tokio::select! {
        () = stop.cancelled() => {}
        _ = scrape => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_answers_within_a_second_while_keep_alive_connections_scrape_metrics_back_to_back()
{
    let dir = tempfile::tempdir().unwrap();
    let (mut process, admin) = start(&config_file(dir.path(), CONFIG), "127.0.0.1:0");
    let admin = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), admin.port());
    let stop = CancellationToken::new();
    let scrapes = Arc::new(AtomicU32::new(0));
    let mut flood = tokio::task::JoinSet::new();
    for _ in 0..8 {
        flood.spawn(scrape_back_to_back(admin, scrapes.clone(), stop.clone()));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut answered = 0;
    let mut failures = Vec::new();
    let mut slowest = Duration::ZERO;
    for i in 0..TRIES {
        let at = Instant::now();
        let got = get_from_prober(admin, "/healthz").await;
        slowest = slowest.max(at.elapsed());
        match got {
            Ok((200, _)) => answered += 1,
            Ok((status, body)) => failures.push(format!("try {i}: {status} {body}")),
            Err(why) => failures.push(format!("try {i}: {why}")),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let metrics = get_from_prober(admin, "/metrics").await;
    stop.cancel();
    while flood.join_next().await.is_some() {}
    let scrapes = scrapes.load(Ordering::Relaxed);
    println!(
        "/healthz beside 8 back-to-back /metrics scrapers ({scrapes} scrapes): {answered}/{TRIES} \
         answered 200 within {} ms (slowest try {} ms)",
        TRY_BOUND.as_millis(),
        slowest.as_millis()
    );
    assert!(
        failures.is_empty(),
        "{failures:#?}\n{}",
        process.stderr_so_far()
    );
    assert!(scrapes > 0);
    // A scrape waits its turn behind at most 8 renders.
    assert!(matches!(metrics, Ok((200, _))), "{metrics:?}");
    process.terminate();
}

/// Send `GET /healthz` (keep-alive) on `stream` and read the answer whole;
/// false when the connection was closed instead.
async fn healthz_kept_alive(stream: &mut BufReader<TcpStream>) -> bool {
    let request = b"GET /healthz HTTP/1.1\r\nHost: sipadmit\r\n\r\n";
    if stream.get_mut().write_all(request).await.is_err() {
        return false;
    }
    let mut status = String::new();
    if !matches!(stream.read_line(&mut status).await, Ok(n) if n > 0) {
        return false;
    }
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    let mut length = 0;
    loop {
        let mut line = String::new();
        stream.read_line(&mut line).await.unwrap();
        let line = line.trim_end().to_ascii_lowercase();
        if line.is_empty() {
            break;
        }
        if let Some(value) = line.strip_prefix("content-length:") {
            length = value.trim().parse().unwrap();
        }
    }
    let mut body = vec![0; length];
    stream.read_exact(&mut body).await.unwrap();
    true
}

/// Wait (at most 20 s) until the peer closes `stream`; how long that took.
async fn closed_after(stream: &mut BufReader<TcpStream>) -> Duration {
    let at = Instant::now();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut rest))
        .await
        .expect("closed within 20 s")
        .ok();
    assert!(rest.is_empty(), "{rest:?}");
    at.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_close_after_two_seconds_and_busy_ones_after_ten() {
    let dir = tempfile::tempdir().unwrap();
    let (mut process, admin) = start(&config_file(dir.path(), CONFIG), "127.0.0.1:0");
    let admin = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), admin.port());

    let mut idle = BufReader::new(connect_from(PROBER, admin).await.unwrap());
    assert!(healthz_kept_alive(&mut idle).await);
    let idled = closed_after(&mut idle).await;
    assert!(
        (Duration::from_millis(1500)..Duration::from_secs(4)).contains(&idled),
        "an idle keep-alive connection closed after {idled:?}"
    );

    let opened = Instant::now();
    let mut busy = BufReader::new(connect_from(PROBER, admin).await.unwrap());
    let mut answered = 0;
    while healthz_kept_alive(&mut busy).await {
        answered += 1;
        assert!(opened.elapsed() < Duration::from_secs(15), "still open");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let lived = opened.elapsed();
    println!(
        "idle keep-alive closed after {} ms; one asking every second closed after {} ms, {answered} answers",
        idled.as_millis(),
        lived.as_millis()
    );
    assert!(
        (Duration::from_secs(9)..Duration::from_secs(14)).contains(&lived),
        "{lived:?}"
    );
    assert!(answered >= 9, "{answered}");

    let (status, text) = get_from_prober(admin, "/metrics").await.unwrap();
    assert_eq!(status, 200);
    let closed = |reason: &str| {
        sample(
            &text,
            &format!("sipadmit_admin_connections_closed_total{{reason=\"{reason}\"}}"),
        )
    };
    assert_eq!(
        (closed("header_timeout"), closed("lifetime")),
        (1.0, 1.0),
        "{text}"
    );
    process.terminate();
}

#[test]
fn an_admin_listener_on_a_non_loopback_address_is_warned_about_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    // 0.0.0.0:0: bound for the test, no traffic goes there.
    let (mut process, _) = start(&config_file(dir.path(), CONFIG), "0.0.0.0:0");
    let warning = process.wait_for("allow_remote");
    assert!(warning.contains("WARN"), "{warning}");
    assert!(warning.contains("no authentication"), "{warning}");
    assert!(warning.contains("0.0.0.0:0"), "{warning}");
    process.terminate();

    let allowed = format!("{CONFIG}\n[admin]\nallow_remote = true\n");
    let (mut process, _) = start(&config_file(dir.path(), &allowed), "0.0.0.0:0");
    // The warning comes before "admin listening" when it comes at all.
    let stderr = process.stderr_so_far();
    assert!(!stderr.contains("allow_remote"), "{stderr}");
    assert!(!stderr.contains("no authentication"), "{stderr}");
    process.terminate();
}

/// Out of file descriptors (trial 18): the admin listener's failed accepts
/// are counted (`sipadmit_admin_accept_failures_total`) and logged at most
/// once in 10 s, where a line came every 100 ms for as long as a scrape
/// waited; once descriptors are free again the scrape is answered.
#[test]
fn failed_admin_accepts_are_counted_and_logged_once_in_ten_seconds() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(
        dir.path(),
        &format!("{CONFIG}[rate_limit]\ntrusted = [\"127.0.0.0/8\"]\n"),
    );
    let upstream = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut process = Sipadmit::spawn(
        Command::new("sh")
            .args(["-c", "ulimit -n 64 && exec \"$0\" \"$@\""])
            .arg(env!("CARGO_BIN_EXE_sipadmit"))
            .args(["run", "--config", config.to_str().unwrap()])
            .args(["--listen", "udp:127.0.0.1:0", "--listen", "tcp:127.0.0.1:0"])
            .args([
                "--upstream",
                &format!("udp:{}", upstream.local_addr().unwrap()),
            ])
            .args(["--admin", "127.0.0.1:0"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null()),
    );
    let admin: SocketAddr = field(&process.wait_for("admin listening"), "addr")
        .parse()
        .unwrap();
    let tcp = process.wait_for("transport=tcp");
    let tcp: SocketAddr = field(&tcp, "addr").parse().unwrap();
    // More connections than descriptors: sipadmit takes them until accept()
    // fails; the rest wait in the backlog.
    let hogs: Vec<std::net::TcpStream> = (0..80)
        .filter_map(|_| std::net::TcpStream::connect(tcp).ok())
        .collect();
    process.wait_for("fault=\"accept\"");
    // A scrape waits in the admin listener's backlog meanwhile.
    let mut scrape = std::net::TcpStream::connect(admin).unwrap();
    scrape
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    drop(hogs);
    scrape
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut response = String::new();
    scrape.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let failures = sample(&response, "sipadmit_admin_accept_failures_total");
    assert!(failures >= 5.0, "{failures} failed accepts counted");
    let stderr = process.terminate();
    let lines = stderr.matches("admin accept failed").count();
    assert_eq!(lines, 1, "{stderr}");
}
