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
    /// `STOPPING=1` was sent: no `READY=1` or `RELOADING=1` after it (a
    /// reload during a drain, a start interrupted), only `STATUS=`.
    stopping: AtomicBool,
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
        })
    }

    /// `READY=1`: the service serves (after the start, or a reload), and
    /// how in `status`. After [`Self::stopping`], the status only.
    pub fn ready(&self, status: &str) {
        let state = (!self.stopping.load(Ordering::Relaxed)).then_some("READY=1");
        self.send(state, status);
    }

    /// `RELOADING=1`, with the time systemd 253 and later ask for. After
    /// [`Self::stopping`], the status only.
    pub fn reloading(&self) {
        let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
            .map(|t| t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1000)
            .unwrap_or(0);
        let state = format!("RELOADING=1\nMONOTONIC_USEC={now}");
        let state = (!self.stopping.load(Ordering::Relaxed)).then_some(state.as_str());
        self.send(state, "reloading the configuration");
    }

    /// `STOPPING=1`: a drain or a stop began, as `status` says.
    pub fn stopping(&self, status: &str) {
        self.stopping.store(true, Ordering::Relaxed);
        self.send(Some("STOPPING=1"), status);
    }

    /// Send `state` (assignments, one per line) if any, and a `STATUS=`
    /// line of `status`. A failure is warned about: systemd then does not
    /// learn the state, and sipadmit serves on.
    fn send(&self, state: Option<&str>, status: &str) {
        let status = status.replace('\n', " ");
        let message = match state {
            Some(state) => format!("{state}\nSTATUS={status}\n"),
            None => format!("STATUS={status}\n"),
        };
        if let Err(e) = self.socket.send_to_addr(message.as_bytes(), &self.to) {
            warn!(socket = %self.named, state, error = %e, "cannot notify systemd");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_reach_a_path_socket_and_an_abstract_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let systemd = UnixDatagram::bind(&path).unwrap();
        let notifier = Notifier::to(path.to_str().unwrap()).unwrap();
        notifier.ready("serving\nudp:127.0.0.1:5060");
        let mut buf = [0u8; 256];
        let n = systemd.recv(&mut buf).unwrap();
        assert_eq!(
            std::str::from_utf8(&buf[..n]).unwrap(),
            "READY=1\nSTATUS=serving udp:127.0.0.1:5060\n"
        );
        notifier.reloading();
        let n = systemd.recv(&mut buf).unwrap();
        let text = std::str::from_utf8(&buf[..n]).unwrap();
        assert!(text.starts_with("RELOADING=1\nMONOTONIC_USEC="), "{text}");

        use std::os::linux::net::SocketAddrExt;
        let name = format!("sipadmit-test-{}", std::process::id());
        let abstract_socket =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(&name).unwrap()).unwrap();
        let notifier = Notifier::to(&format!("@{name}")).unwrap();
        notifier.stopping("draining");
        let n = abstract_socket.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1\nSTATUS=draining\n");
        // Once stopping, a reload or a late start tells its status only.
        notifier.reloading();
        let n = abstract_socket.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STATUS=reloading the configuration\n");
        notifier.ready("serving");
        let n = abstract_socket.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STATUS=serving\n");

        let err = Notifier::to("relative/notify").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
