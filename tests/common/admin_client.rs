//! A test's view of the admin listener: one HTTP/1.1 request, the samples
//! of a `/metrics` exposition, and `promtool check metrics` on it.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// One HTTP/1.1 request with `Connection: close` to `addr`, each read
/// waiting at most `bound`: the status and the body.
pub fn http(addr: SocketAddr, method: &str, path: &str, bound: Duration) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(bound)).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP response: {response:?}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    (status, body.to_owned())
}

/// [`http`] `GET path` from async code (on a blocking thread of the
/// tokio runtime).
pub async fn http_get(addr: SocketAddr, path: &str, bound: Duration) -> (u16, String) {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || http(addr, "GET", &path, bound))
        .await
        .unwrap()
}

/// The value of the sample line starting with `series ` (name and labels
/// as rendered), or `None` when the exposition has no such line.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.parse().unwrap())
}

/// `promtool check metrics` (at `promtool`) accepts `text`; the text is
/// written to `dir/metrics.txt` first.
pub fn assert_promtool_accepts(promtool: &Path, dir: &Path, text: &str) {
    let scraped = dir.join("metrics.txt");
    std::fs::write(&scraped, text).unwrap();
    let checked = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&scraped).unwrap())
        .output()
        .unwrap();
    assert!(
        checked.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
}
