//! How many TLS handshakes per second one core sustains on the server side
//! of `ServerTls` (`transport::tls`): RSA-2048 and ECDSA P-256 server keys,
//! TLS 1.3 and 1.2, full and resumed handshakes, and the Lync Phone Edition
//! case (TLS 1.0, static-RSA AES128-SHA, with the Lync-compatible setting).
//!
//! Run with: `cargo run --release --example tls_handshakes [-- SECONDS_PER_ROW]`
//! (default 3 s per row; needs the `openssl` command line tool).
//!
//! The server is `ServerTls::accept` on a current-thread tokio runtime (as in
//! `sipadmit run`) on its own thread, spawning one task per connection that
//! answers one small request and closes. The clients are `openssl s_time`
//! processes (`-new`: a full handshake per connection; `-reuse`: resume the
//! first session), one at a time. The figure is handshakes per CPU-second
//! of the server thread (user + system time from `/proc/thread-self/stat`),
//! so it does not depend on how fast the client is; the wall-clock rate is
//! printed too (bounded by the client on the other core).
//!
//! Certificates come from the test PKI (`tests/common/tls.rs`), generated
//! at start.

#[path = "../tests/common/tls.rs"]
mod pki;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sipadmit::config::{Identity, TlsSettings, TlsVersion};
use sipadmit::transport::tls::ServerTls;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// One row of the table: what the server presents and what the client offers.
struct Row {
    key: &'static str,
    protocol: &'static str,
    settings: TlsSettings,
    s_time_args: &'static [&'static str],
}

/// What one run measured.
struct Figures {
    handshakes: u64,
    resumed: u64,
    failed: u64,
    cpu: Duration,
    wall: Duration,
}

/// User + system time of the calling thread, from `/proc/thread-self/stat`.
fn thread_cpu(clock_ticks_per_sec: u64) -> Duration {
    let stat =
        std::fs::read_to_string("/proc/thread-self/stat").expect("read /proc/thread-self/stat");
    // Fields after the command name (which is in parentheses and may hold spaces).
    let after = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 here (from 1).
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 1000 / clock_ticks_per_sec)
}

fn clock_ticks_per_sec() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

/// Serve handshakes until `stop`; counts in the returned figures (CPU of this thread).
fn serve(
    settings: TlsSettings,
    addr_tx: std::sync::mpsc::Sender<SocketAddr>,
    stop: CancellationToken,
    ticks: u64,
) -> Figures {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let server = Arc::new(ServerTls::new(&settings).unwrap_or_else(|e| panic!("{e}")));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        addr_tx.send(listener.local_addr().unwrap()).unwrap();
        let counts = Arc::new([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)]);
        let (cpu_start, wall_start) = (thread_cpu(ticks), Instant::now());
        loop {
            let tcp = tokio::select! {
                () = stop.cancelled() => break,
                r = listener.accept() => r.unwrap().0,
            };
            let (server, counts) = (server.clone(), counts.clone());
            tokio::spawn(async move {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
                let mut tls = match server.accept(tcp, deadline).await {
                    Ok(tls) => tls,
                    Err(e) => {
                        if counts[2].fetch_add(1, Ordering::Relaxed) == 0 {
                            eprintln!("first failed handshake: {e}");
                        }
                        return;
                    }
                };
                counts[0].fetch_add(1, Ordering::Relaxed);
                if tls.ssl().session_reused() {
                    counts[1].fetch_add(1, Ordering::Relaxed);
                }
                // s_time -www sends one request and reads until close.
                let mut buf = [0u8; 1024];
                let _ = tls.read(&mut buf).await;
                let _ = tls
                    .write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n")
                    .await;
                let _ = tls.shutdown().await;
            });
        }
        Figures {
            handshakes: counts[0].load(Ordering::Relaxed),
            resumed: counts[1].load(Ordering::Relaxed),
            failed: counts[2].load(Ordering::Relaxed),
            cpu: thread_cpu(ticks) - cpu_start,
            wall: wall_start.elapsed(),
        }
    })
}

fn run(row: &Row, reuse: bool, seconds: u64, ticks: u64) -> Figures {
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let stop = CancellationToken::new();
    let server = {
        let (settings, stop) = (row.settings.clone(), stop.clone());
        std::thread::spawn(move || serve(settings, addr_tx, stop, ticks))
    };
    let addr = addr_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("server started");
    let status = Command::new("openssl")
        .args(["s_time", "-connect", &addr.to_string(), "-www", "/"])
        .arg(if reuse { "-reuse" } else { "-new" })
        .args(["-time", &seconds.to_string()])
        .args(row.s_time_args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run openssl s_time");
    stop.cancel();
    let figures = server.join().expect("server thread");
    if !status.success() {
        eprintln!(
            "openssl s_time exited with {status} ({} {})",
            row.key, row.protocol
        );
    }
    figures
}

fn main() {
    let seconds: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    if Command::new("openssl").arg("version").output().is_err() {
        eprintln!("needs the openssl command line tool (Debian: openssl)");
        std::process::exit(2);
    }
    let ticks = clock_ticks_per_sec();
    let dir = tempfile::tempdir().unwrap();
    let files = pki::Pki::get().write(dir.path());
    let presenting = |pair: &(std::path::PathBuf, std::path::PathBuf)| TlsSettings {
        identity: Some(Identity {
            certificate: pair.0.clone(),
            private_key: pair.1.clone(),
        }),
        ..TlsSettings::default()
    };
    let lync_compatible = TlsSettings {
        min_version: TlsVersion::Tls1_0,
        ciphers: "DEFAULT:@SECLEVEL=0".into(),
        ..presenting(&files.server)
    };
    let rows = [
        Row {
            key: "RSA-2048",
            protocol: "TLS 1.3",
            settings: presenting(&files.server),
            s_time_args: &["-tls1_3"],
        },
        Row {
            key: "RSA-2048",
            protocol: "TLS 1.2 ECDHE-RSA-AES128-GCM",
            settings: presenting(&files.server),
            s_time_args: &["-tls1_2", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256"],
        },
        Row {
            key: "RSA-2048",
            protocol: "TLS 1.0 AES128-SHA (Lync PE)",
            settings: lync_compatible,
            s_time_args: &["-tls1", "-cipher", "AES128-SHA:@SECLEVEL=0"],
        },
        Row {
            key: "ECDSA P-256",
            protocol: "TLS 1.3",
            settings: presenting(&files.server_ecdsa),
            s_time_args: &["-tls1_3"],
        },
        Row {
            key: "ECDSA P-256",
            protocol: "TLS 1.2 ECDHE-ECDSA-AES128-GCM",
            settings: presenting(&files.server_ecdsa),
            s_time_args: &["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"],
        },
    ];
    println!(
        "{:<12} {:<32} {:<8} {:>10} {:>8} {:>9} {:>16} {:>12}",
        "server key",
        "protocol",
        "mode",
        "handshakes",
        "resumed",
        "cpu s",
        "per cpu-second",
        "wall per s"
    );
    for row in &rows {
        for reuse in [false, true] {
            let f = run(row, reuse, seconds, ticks);
            let cpu = f.cpu.as_secs_f64();
            let per_cpu = if cpu > 0.0 {
                f.handshakes as f64 / cpu
            } else {
                f64::NAN
            };
            println!(
                "{:<12} {:<32} {:<8} {:>10} {:>8} {:>9.2} {:>16.0} {:>12.0}{}",
                row.key,
                row.protocol,
                if reuse { "resumed" } else { "full" },
                f.handshakes,
                f.resumed,
                cpu,
                per_cpu,
                f.handshakes as f64 / f.wall.as_secs_f64(),
                if f.failed > 0 {
                    format!("  ({} failed)", f.failed)
                } else {
                    String::new()
                },
            );
        }
    }
}
