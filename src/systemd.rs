//! Telling systemd how the service stands, for a unit of `Type=notify`
//! (`config/sipadmit.service`): `READY=1` once every listener is bound and
//! served, `RELOADING=1` then `READY=1` around a reload (SIGHUP), and
//! `STOPPING=1` when a drain or stop begins, each with a `STATUS=` line
//! that `systemctl status` shows. The protocol of sd_notify(3): one
//! datagram of newline-separated assignments to the Unix socket named by
//! `$NOTIFY_SOCKET` (a path, or an abstract name after `@`). Without that
//! variable (started by hand, by a test, by another service manager)
//! nothing is sent.
//!
//! With `Type=notify`, `systemctl start` returns once sipadmit serves (or
//! fails), and a `systemctl reload` sent meanwhile waits for it instead of
//! reaching a process that cannot take a SIGHUP yet.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

use tracing::warn;

/// The variable systemd names its notification socket in.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// The socket of `$NOTIFY_SOCKET`, to send states to.
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    to: SocketAddr,
    /// How the address was given, for the warning of a failed send.
    named: String,
    /// `STOPPING=1` was sent: nothing but another `STOPPING=1` after it
    /// (a reload during a drain, a start interrupted), so the status stays
    /// what it said.
    stopping: AtomicBool,
    /// What the instance serves (from [`Self::serving`]), the start of
    /// each later status.
    serves: Mutex<String>,
}

impl Notifier {
    /// The notifier of `$NOTIFY_SOCKET`, if it is set; a value that cannot
    /// be a socket address is warned about, and nothing is sent.
    pub fn from_env() -> Option<Self> {
        let named = std::env::var_os(NOTIFY_SOCKET)?;
        let named = named.to_string_lossy().into_owned();
        match Self::to(&named) {
            Ok(notifier) => Some(notifier),
            Err(e) => {
                warn!(variable = NOTIFY_SOCKET, value = %named, error = %e, "cannot notify systemd");
                None
            }
        }
    }

    /// A notifier sending to the socket `named` (a path, or `@` and an
    /// abstract name).
    pub fn to(named: &str) -> io::Result<Self> {
        let to = match named.strip_prefix('@') {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(name)?
            }
            None if named.starts_with('/') => SocketAddr::from_pathname(named)?,
            None => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "neither an absolute path nor an abstract name (@...)",
                ))
            }
        };
        // Never blocks the event loop: a full queue at systemd loses the
        // notification (warned about), not time.
        let socket = UnixDatagram::unbound()?;
        socket.set_nonblocking(true)?;
        Ok(Self {
            socket,
            to,
            named: named.to_owned(),
            stopping: AtomicBool::new(false),
            serves: Mutex::new(String::new()),
        })
    }

    /// `READY=1` after the start: the service serves, `what` (its
    /// listeners and registrar), which every later status begins with.
    pub fn serving(&self, what: &str) {
        *self.serves.lock().unwrap_or_else(PoisonError::into_inner) = what.to_owned();
        self.unless_stopping("READY=1", "");
    }

    /// `RELOADING=1`, with the time systemd 253 and later ask for.
    pub fn reloading(&self) {
        let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
            .map(|t| t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1000)
            .unwrap_or(0);
        let state = format!("RELOADING=1\nMONOTONIC_USEC={now}");
        self.unless_stopping(&state, "reloading the configuration");
    }

    /// `READY=1` after a reload, and what it did (`outcome`).
    pub fn reloaded(&self, outcome: &str) {
        self.unless_stopping("READY=1", outcome);
    }

    /// `STOPPING=1`: a drain or a stop began, as `status` says.
    pub fn stopping(&self, status: &str) {
        self.stopping.store(true, Ordering::Relaxed);
        self.send("STOPPING=1", status);
    }

    /// Send `state` with the status of what the instance serves and
    /// `detail`, unless it is stopping.
    fn unless_stopping(&self, state: &str, detail: &str) {
        if self.stopping.load(Ordering::Relaxed) {
            return;
        }
        let serves = self
            .serves
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let status = match (serves.is_empty(), detail.is_empty()) {
            (_, true) => serves,
            (true, false) => detail.to_owned(),
            (false, false) => format!("{serves}; {detail}"),
        };
        self.send(state, &status);
    }

    /// Send `state` (assignments, one per line) and a `STATUS=` line of
    /// `status`. A failure is warned about: systemd then does not learn
    /// the state, and sipadmit serves on.
    fn send(&self, state: &str, status: &str) {
        let message = format!("{state}\nSTATUS={}\n", status.replace('\n', " "));
        if let Err(e) = self.socket.send_to_addr(message.as_bytes(), &self.to) {
            warn!(socket = %self.named, state, error = %e, "cannot notify systemd");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn received(socket: &UnixDatagram) -> String {
        let mut buf = [0u8; 256];
        let n = socket.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn states_reach_a_path_socket_and_an_abstract_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let systemd = UnixDatagram::bind(&path).unwrap();
        let notifier = Notifier::to(path.to_str().unwrap()).unwrap();
        notifier.serving("serving\nudp:127.0.0.1:5060");
        assert_eq!(
            received(&systemd),
            "READY=1\nSTATUS=serving udp:127.0.0.1:5060\n"
        );
        notifier.reloading();
        let text = received(&systemd);
        assert!(text.starts_with("RELOADING=1\nMONOTONIC_USEC="), "{text}");
        assert!(
            text.ends_with("\nSTATUS=serving udp:127.0.0.1:5060; reloading the configuration\n"),
            "{text}"
        );
        notifier.reloaded("configuration generation 2");
        assert_eq!(
            received(&systemd),
            "READY=1\nSTATUS=serving udp:127.0.0.1:5060; configuration generation 2\n"
        );

        use std::os::linux::net::SocketAddrExt;
        let name = format!("sipadmit-test-{}", std::process::id());
        let abstract_socket =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(&name).unwrap()).unwrap();
        abstract_socket.set_nonblocking(true).unwrap();
        let notifier = Notifier::to(&format!("@{name}")).unwrap();
        notifier.stopping("draining");
        assert_eq!(received(&abstract_socket), "STOPPING=1\nSTATUS=draining\n");
        // Once stopping, a reload or a late start tells nothing: the
        // status stays what the stop said; a second stop is told.
        notifier.reloading();
        notifier.reloaded("configuration generation 2");
        notifier.serving("serving");
        notifier.stopping("stopping");
        assert_eq!(received(&abstract_socket), "STOPPING=1\nSTATUS=stopping\n");

        let err = Notifier::to("relative/notify").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
