//! Latency and CPU added per REGISTER over TLS against TCP, same harness,
//! same run: `sipadmit run` (the binary, one process) with a `tcp:` and a
//! `tls:` listener in front of a UDP registrar that answers 200 (a thread
//! here); one client connection per transport sends REGISTERs one after
//! the other (each waits for its 200). Figures: round-trip p50/p99 and the
//! sipadmit process's CPU time (user + system, `/proc/PID/stat`) per
//! REGISTER, TCP then TLS (TLS 1.3, RSA-2048 server key, one handshake per
//! run, not counted: see `examples/tls_handshakes` for those).
//!
//! Run with: `cargo build --release && cargo run --release --example
//! tls_register_load [-- REGISTERS]` (default 5,000 per transport).

#[path = "../tests/common/binary.rs"]
mod binary;
#[path = "../tests/common/sip_stream.rs"]
mod sip_stream;
#[path = "../tests/common/tls.rs"]
mod tls;

use std::net::{SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use binary::free_port;
use sip_stream::{status, Agent, SipStream};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

const UA: &str = "UCCAPI/15.0.4481.1000 OC/15.0.4481.1000 (Microsoft Lync)";

/// CPU time (user + system) of process `pid`.
fn process_cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read stat");
    let after = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let hz = 100; // sysconf(_SC_CLK_TCK) on Linux
    Duration::from_millis(ticks * 1000 / hz)
}

/// A UDP registrar on its own thread: every request answered 200.
fn registrar() -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    let agent = Agent::new("registrar", "registrar", addr, "UDP");
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            let request = String::from_utf8_lossy(&buf[..n]).into_owned();
            if !request.starts_with("SIP/2.0") {
                let _ = socket.send_to(agent.answer(&request, "200 OK").as_bytes(), from);
            }
        }
    });
    addr
}

/// Send `n` REGISTERs one after the other; sorted round trips.
async fn run<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut SipStream<S>,
    agent: &Agent,
    n: u32,
) -> Vec<Duration> {
    let mut rtts = Vec::with_capacity(n as usize);
    for cseq in 1..=n {
        let register = agent.register(&format!("load-{}", agent.transport), cseq);
        let start = Instant::now();
        conn.send(&register).await.unwrap();
        let answer = conn
            .recv_starting("SIP/2.0", Duration::from_secs(5))
            .await
            .message("REGISTER answer");
        assert_eq!(status(&answer), 200);
        rtts.push(start.elapsed());
    }
    rtts.sort();
    rtts
}

fn report(transport: &str, rtts: &[Duration], cpu: Duration) {
    let pct = |p: f64| rtts[((rtts.len() as f64 * p) as usize).min(rtts.len() - 1)];
    println!(
        "{transport:>4}: {n} REGISTERs, round trip p50 {p50:>4} us, p99 {p99:>4} us; sipadmit CPU {cpu:>5.1} us/REGISTER",
        n = rtts.len(),
        p50 = pct(0.50).as_micros(),
        p99 = pct(0.99).as_micros(),
        cpu = cpu.as_secs_f64() * 1e6 / rtts.len() as f64,
    );
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let n: u32 = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("REGISTERS"))
        .unwrap_or(5000);
    let dir = tempfile::tempdir().unwrap();
    let files = tls::Pki::get().write(dir.path());
    let config = dir.path().join("sipadmit.toml");
    std::fs::write(
        &config,
        format!(
            "[tls]\ncertificate = \"{}\"\nprivate_key = \"{}\"\n",
            files.server.0.display(),
            files.server.1.display()
        ),
    )
    .unwrap();
    let upstream = registrar();
    let (udp, tcp, tls_port) = (free_port(), free_port(), free_port());
    let binary = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/sipadmit");
    let mut child = Command::new(&binary)
        .args(["run", "--config", config.to_str().unwrap()])
        .args(["--listen", &format!("udp:127.0.0.1:{udp}")])
        .args(["--listen", &format!("tcp:127.0.0.1:{tcp}")])
        .args(["--listen", &format!("tls:127.0.0.1:{tls_port}")])
        .args([
            "--upstream",
            &format!("udp:{upstream}"),
            "--decision-log",
            "/dev/null",
        ])
        .env("RUST_LOG", "warn")
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e} (cargo build --release first)", binary.display()));
    let tcp_addr: SocketAddr = format!("127.0.0.1:{tcp}").parse().unwrap();
    let tls_addr: SocketAddr = format!("127.0.0.1:{tls_port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(tls_addr).await.is_err() {
        assert!(Instant::now() < deadline, "sipadmit did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pid = child.id();

    let mut plain = SipStream::new(TcpStream::connect(tcp_addr).await.unwrap());
    let plain_agent = Agent::new("tcp", UA, plain.stream.local_addr().unwrap(), "TCP");
    let secure = tls::TestClient::modern(&files.ca)
        .connect(tls_addr)
        .await
        .unwrap();
    let secure_agent = Agent::new("tls", UA, secure.get_ref().local_addr().unwrap(), "TLS");
    let mut secure = SipStream::new(secure);
    // Warm-up on both.
    run(&mut plain, &plain_agent, 200).await;
    run(&mut secure, &secure_agent, 200).await;

    let before = process_cpu(pid);
    let rtts = run(&mut plain, &plain_agent, n).await;
    let middle = process_cpu(pid);
    report("TCP", &rtts, middle - before);
    let rtts = run(&mut secure, &secure_agent, n).await;
    report("TLS", &rtts, process_cpu(pid) - middle);
    let _ = child.kill();
    let _ = child.wait();
}
