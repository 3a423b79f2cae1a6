//! Sending the probe and waiting for its answer (blocking I/O, every wait
//! bounded by one deadline: the probe never hangs).
//!
//! UDP: the request is retransmitted as RFC 3261 17.1 says (T1 = 500 ms,
//! doubling, at most T2 = 4 s apart) until a response comes. TCP and TLS:
//! one connection, framed by Content-Length ([`StreamFramer`]). TLS: the
//! server certificate is verified against `--ca` (or the system's roots)
//! and the target's IP address (or `--tls-name`), with the context
//! [`TlsClient`] made before anything is sent.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use openssl::ssl::{HandshakeError, SslStream};

use super::message::{Answer, ProbeMethod, ProbeRequest};
use super::tls::{reasons, TlsClient, TlsOptions};
use crate::config::endpoint::Endpoint;
use crate::sip::framing::{Frame, StreamFramer};
use crate::sip::SipView;
use crate::vocabulary::Transport;

/// RFC 3261 T1: the first UDP retransmission interval.
const T1: Duration = Duration::from_millis(500);
/// RFC 3261 T2: the longest UDP retransmission interval.
const T2: Duration = Duration::from_secs(4);
/// Largest message accepted (bytes).
const MAX_MESSAGE_BYTES: usize = 65_535;

/// Why a probe got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The socket could not be opened or connected.
    #[error("{target}: cannot connect: {source}")]
    Connect {
        /// The target.
        target: Endpoint,
        /// The OS error.
        source: io::Error,
    },
    /// The TLS handshake failed (certificate not trusted, wrong name, ...).
    #[error("{target}: TLS handshake failed: {detail}")]
    Handshake {
        /// The target.
        target: Endpoint,
        /// OpenSSL's reason, with the certificate check's result.
        detail: String,
    },
    /// No final answer before the deadline.
    #[error("{target}: no final answer to the {method} within {} ms ({detail})", timeout.as_millis())]
    Timeout {
        /// The target.
        target: Endpoint,
        /// The request's method.
        method: ProbeMethod,
        /// `--timeout`.
        timeout: Duration,
        /// What was sent and received.
        detail: String,
    },
    /// The peer closed the connection before a final answer.
    #[error("{target}: the connection was closed before a final answer to the {method}")]
    Closed {
        /// The target.
        target: Endpoint,
        /// The request's method.
        method: ProbeMethod,
    },
    /// Sending or receiving failed.
    #[error("{target}: {source}")]
    Io {
        /// The target.
        target: Endpoint,
        /// The OS error.
        source: io::Error,
    },
}

/// Sends `request` to `target` and returns its final answer; an INVITE's
/// answer is acknowledged (and a 2xx's call ended with a BYE) before
/// returning. Gives up `timeout` after starting. `tls` is the context of a
/// `tls:` target (`None`: the system's roots, no client certificate).
pub fn exchange(
    target: Endpoint,
    tls: Option<&TlsClient>,
    request: &ProbeRequest,
    timeout: Duration,
) -> Result<Answer, ProbeError> {
    let deadline = Instant::now() + timeout;
    let mut conn = Conn::open(target, tls, deadline)?;
    let local = conn.local_addr(target)?;
    let method = request.method.as_str();
    let (view, provisional, elapsed) = transaction(
        &mut conn,
        target,
        &request.render(target.transport, local),
        |view| request.is_answer(view, method, &request.branch),
        deadline,
    )
    .map_err(|e| e.into_error(target, request.method, timeout))?;
    let mut answer = Answer::read(&view, provisional, elapsed).ok_or(ProbeError::Closed {
        target,
        method: request.method,
    })?;
    if request.method == ProbeMethod::Invite {
        answer.note = close_invite(&mut conn, target, request, &view, local, deadline);
    }
    Ok(answer)
}

/// ACK a non-2xx answer; ACK a 2xx and end its call with a BYE. A problem
/// ending the call is returned as a note.
fn close_invite(
    conn: &mut Conn,
    target: Endpoint,
    request: &ProbeRequest,
    view: &SipView,
    local: SocketAddr,
    deadline: Instant,
) -> Option<String> {
    let status = view.status().unwrap_or_default();
    if status >= 300 {
        return conn
            .send(&request.ack(view, target.transport, local))
            .err()
            .map(|e| format!("the ACK could not be sent: {e}"));
    }
    let (ack, bye) = request.ack_and_bye(view, target.transport, local);
    if let Err(e) = conn.send(&ack) {
        return Some(format!("the ACK could not be sent: {e}"));
    }
    let branch = format!("{}-bye", request.branch);
    match transaction(
        conn,
        target,
        &bye,
        |v| request.is_answer(v, "BYE", &branch),
        deadline,
    ) {
        Ok((v, _, _)) if v.status().is_some_and(|s| s < 300) => None,
        Ok((v, _, _)) => Some(format!(
            "the call was set up, and its BYE answered {}",
            v.status().unwrap_or_default()
        )),
        Err(_) => Some("the call was set up, and its BYE got no answer in time".into()),
    }
}

/// Why a transaction ended without a final answer.
enum Wait {
    /// `unreachable`: how many ICMP port unreachable reports came back.
    Timeout {
        sent: u32,
        unreachable: u32,
        provisional: Vec<u16>,
    },
    Closed,
    Io(io::Error),
}

impl Wait {
    fn into_error(self, target: Endpoint, method: ProbeMethod, timeout: Duration) -> ProbeError {
        match self {
            Self::Timeout {
                sent,
                unreachable,
                provisional,
            } => ProbeError::Timeout {
                target,
                method,
                timeout,
                detail: match (provisional.last(), unreachable) {
                    (Some(code), _) => {
                        format!("sent {sent} time(s), last provisional answer {code}")
                    }
                    (None, 0) => format!("sent {sent} time(s), nothing came back"),
                    (None, n) => format!(
                        "sent {sent} time(s), {n} answered by ICMP port unreachable: \
                         nothing listens there"
                    ),
                },
            },
            Self::Closed => ProbeError::Closed { target, method },
            Self::Io(source) => ProbeError::Io { target, source },
        }
    }
}

/// Sends `bytes` (again over UDP, on RFC 3261 timers, until an answer
/// comes) and waits for the final response that `is_answer`: it, the
/// provisional statuses before it, the time it took.
fn transaction(
    conn: &mut Conn,
    target: Endpoint,
    bytes: &[u8],
    is_answer: impl Fn(&SipView) -> bool,
    deadline: Instant,
) -> Result<(SipView, Vec<u16>, Duration), Wait> {
    let start = Instant::now();
    conn.send(bytes).map_err(Wait::Io)?;
    let mut sent = 1;
    let mut interval = T1;
    let mut resend_at = (target.transport == Transport::Udp).then(|| start + interval);
    let mut unreachable = 0;
    let mut provisional = Vec::new();
    loop {
        let wake = resend_at.map_or(deadline, |at| at.min(deadline));
        match conn.recv(wake)? {
            // Nobody listens there (yet): wait for the next resend as after
            // silence, never resend at once (each resend would draw another
            // report, a flood).
            Heard::Unreachable => unreachable += 1,
            Heard::Message(message) => {
                let Ok(view) = SipView::parse(message) else {
                    continue;
                };
                if !is_answer(&view) {
                    continue;
                }
                match view.status() {
                    Some(code) if code < 200 => {
                        provisional.push(code);
                        resend_at = None;
                    }
                    _ => return Ok((view, provisional, start.elapsed())),
                }
            }
            Heard::Nothing if Instant::now() >= deadline => {
                return Err(Wait::Timeout {
                    sent,
                    unreachable,
                    provisional,
                })
            }
            Heard::Nothing => {
                conn.send(bytes).map_err(Wait::Io)?;
                sent += 1;
                interval = (interval * 2).min(T2);
                resend_at = Some(Instant::now() + interval);
            }
        }
    }
}

// === connections ===

/// What a wait for the next message ended with.
enum Heard {
    Message(Bytes),
    /// The wait's end came first.
    Nothing,
    /// An ICMP port unreachable of an earlier datagram (UDP).
    Unreachable,
}

/// An open socket toward the target.
enum Conn {
    /// Connected to the target: only its datagrams are received.
    Udp(UdpSocket),
    Tcp(Stream<TcpStream>),
    Tls(Box<Stream<SslStream<TcpStream>>>),
}

/// A byte stream, its socket (for timeouts) and what was read of it.
struct Stream<S> {
    io: S,
    socket: TcpStream,
    buf: BytesMut,
    framer: StreamFramer,
}

impl Conn {
    fn open(
        target: Endpoint,
        tls: Option<&TlsClient>,
        deadline: Instant,
    ) -> Result<Self, ProbeError> {
        let connect = |source| ProbeError::Connect { target, source };
        if target.transport == Transport::Udp {
            let any: SocketAddr = match target.addr {
                SocketAddr::V4(_) => ([0, 0, 0, 0], 0).into(),
                SocketAddr::V6(_) => ([0u16; 8], 0).into(),
            };
            let socket = UdpSocket::bind(any).map_err(connect)?;
            socket.connect(target.addr).map_err(connect)?;
            return Ok(Self::Udp(socket));
        }
        let left = remaining(deadline).ok_or_else(|| connect(io::ErrorKind::TimedOut.into()))?;
        let socket = TcpStream::connect_timeout(&target.addr, left).map_err(connect)?;
        socket.set_nodelay(true).map_err(connect)?;
        let io = socket.try_clone().map_err(connect)?;
        if target.transport == Transport::Tcp {
            return Ok(Self::Tcp(Stream::new(io, socket)));
        }
        let default;
        let tls = match tls {
            Some(tls) => tls,
            None => {
                default =
                    TlsClient::new(&TlsOptions::default()).map_err(|e| ProbeError::Handshake {
                        target,
                        detail: e.to_string(),
                    })?;
                &default
            }
        };
        let name = tls
            .server_name
            .clone()
            .unwrap_or_else(|| target.addr.ip().to_string());
        set_timeouts(&socket, deadline).map_err(connect)?;
        let io = tls
            .connector
            .connect(&name, io)
            .map_err(|e| handshake_error(target, e))?;
        Ok(Self::Tls(Box::new(Stream::new(io, socket))))
    }

    /// The local address, as the request's Via and Contact name it (the
    /// unspecified address of a UDP socket replaced by the one the kernel
    /// routes from).
    fn local_addr(&self, target: Endpoint) -> Result<SocketAddr, ProbeError> {
        let io = |source| ProbeError::Io { target, source };
        match self {
            Self::Udp(socket) => socket.local_addr().map_err(io),
            Self::Tcp(s) => s.socket.local_addr().map_err(io),
            Self::Tls(s) => s.socket.local_addr().map_err(io),
        }
    }

    fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Self::Udp(socket) => socket.send(bytes).map(drop),
            Self::Tcp(s) => s.io.write_all(bytes).and_then(|()| s.io.flush()),
            Self::Tls(s) => s.io.write_all(bytes).and_then(|()| s.io.flush()),
        }
    }

    /// The next message, or what came instead before `until`.
    fn recv(&mut self, until: Instant) -> Result<Heard, Wait> {
        let message = |m: Option<Bytes>| m.map_or(Heard::Nothing, Heard::Message);
        match self {
            Self::Udp(socket) => {
                let Some(left) = remaining(until) else {
                    return Ok(Heard::Nothing);
                };
                socket.set_read_timeout(Some(left)).map_err(Wait::Io)?;
                let mut buf = vec![0u8; MAX_MESSAGE_BYTES];
                match socket.recv(&mut buf) {
                    Ok(n) => Ok(Heard::Message(Bytes::copy_from_slice(&buf[..n]))),
                    Err(e) if is_timeout(&e) => Ok(Heard::Nothing),
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                        Ok(Heard::Unreachable)
                    }
                    Err(e) => Err(Wait::Io(e)),
                }
            }
            Self::Tcp(s) => s.recv(until).map(message),
            Self::Tls(s) => s.recv(until).map(message),
        }
    }
}

impl<S: Read> Stream<S> {
    fn new(io: S, socket: TcpStream) -> Self {
        Self {
            io,
            socket,
            buf: BytesMut::new(),
            framer: StreamFramer::new(MAX_MESSAGE_BYTES),
        }
    }

    fn recv(&mut self, until: Instant) -> Result<Option<Bytes>, Wait> {
        loop {
            match self.framer.decode(&mut self.buf) {
                Ok(Some(Frame::Message(m))) => return Ok(Some(m)),
                Ok(Some(Frame::Ping)) => continue,
                Ok(None) => {}
                Err(e) => return Err(Wait::Io(io::Error::new(io::ErrorKind::InvalidData, e))),
            }
            let Some(left) = remaining(until) else {
                return Ok(None);
            };
            self.socket.set_read_timeout(Some(left)).map_err(Wait::Io)?;
            let mut chunk = [0u8; 8192];
            match self.io.read(&mut chunk) {
                Ok(0) => return Err(Wait::Closed),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if is_timeout(&e) => return Ok(None),
                Err(e) => return Err(Wait::Io(e)),
            }
        }
    }
}

/// Time left before `deadline` (`None` once it passed).
fn remaining(deadline: Instant) -> Option<Duration> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

fn set_timeouts(socket: &TcpStream, deadline: Instant) -> io::Result<()> {
    let left = remaining(deadline).ok_or(io::ErrorKind::TimedOut)?;
    socket.set_read_timeout(Some(left))?;
    socket.set_write_timeout(Some(left))
}

/// Why the handshake failed, in OpenSSL's words without its error codes
/// and source files.
fn handshake_error(target: Endpoint, e: HandshakeError<TcpStream>) -> ProbeError {
    let detail = match e {
        HandshakeError::SetupFailure(stack) => reasons(&stack),
        HandshakeError::Failure(mid) | HandshakeError::WouldBlock(mid) => {
            let verify = mid.ssl().verify_result();
            let error = mid.error();
            let timed_out = error.io_error().is_some_and(is_timeout);
            match (timed_out, verify.as_raw(), error.ssl_error()) {
                (true, _, _) => "no answer in time".to_owned(),
                (false, 0, Some(stack)) => reasons(stack),
                (false, 0, None) => error.to_string(),
                (false, _, _) => format!("certificate not accepted: {}", verify.error_string()),
            }
        }
    };
    ProbeError::Handshake { target, detail }
}
