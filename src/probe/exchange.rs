//! Sending the probe and waiting for its answer (blocking I/O, every wait
//! bounded by one deadline: the probe never hangs).
//!
//! UDP: the request is retransmitted as RFC 3261 17.1 says (T1 = 500 ms,
//! doubling, at most T2 = 4 s apart): an INVITE until a response comes,
//! another request until its final response. TCP and TLS:
//! one connection, framed by Content-Length ([`StreamFramer`]). TLS: the
//! server certificate is verified against `--ca` (or the system's roots)
//! and the target's IP address (or `--tls-name`), with the context
//! [`TlsClient`] made before anything is sent.
//!
//! What came back that is not an answer (not SIP, another transaction's,
//! an unfinished message) is counted, and named when no answer came.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use openssl::ssl::{HandshakeError, SslStream};

use super::message::{remote_target, Answer, ProbeMethod, ProbeRequest};
use super::tls::{reasons, TlsClient, TlsOptions};
use crate::config::endpoint::Endpoint;
use crate::sip::framing::{Frame, FramingError, StreamFramer};
use crate::sip::SipView;
use crate::vocabulary::Transport;

/// RFC 3261 T1: the first UDP retransmission interval.
const T1: Duration = Duration::from_millis(500);
/// RFC 3261 T2: the longest UDP retransmission interval.
const T2: Duration = Duration::from_secs(4);
/// Largest message accepted (bytes).
const MAX_MESSAGE_BYTES: usize = 65_535;
/// How many bytes of something that is not SIP an error message shows.
const SAMPLE_BYTES: usize = 32;

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
    #[error(
        "{target}: the connection was closed before a final answer to the {method}{}",
        received.as_ref().map(|r| format!(" ({r})")).unwrap_or_default()
    )]
    Closed {
        /// The target.
        target: Endpoint,
        /// The request's method.
        method: ProbeMethod,
        /// What came back instead of an answer, if anything.
        received: Option<String>,
    },
    /// What came back over TCP or TLS cannot be framed as SIP.
    #[error("{target}: the answer to the {method} is not SIP: {detail}")]
    NotSip {
        /// The target.
        target: Endpoint,
        /// The request's method.
        method: ProbeMethod,
        /// Why it cannot be framed, and its first bytes.
        detail: String,
    },
    /// The request does not fit in one UDP datagram.
    #[error(
        "{target}: the {method} is {bytes} bytes, more than one UDP datagram carries \
         ({most}): shorten --ua, --to or --from, or probe over tcp:"
    )]
    TooLargeForUdp {
        /// The target.
        target: Endpoint,
        /// The request's method.
        method: ProbeMethod,
        /// The request's length, bytes.
        bytes: usize,
        /// The largest UDP payload to the target's address family, bytes.
        most: usize,
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
    let rendered = request.render(target.transport, local);
    if target.transport == Transport::Udp {
        // 65,535 less the UDP header, and the IPv4 header for IPv4.
        let most = if target.addr.is_ipv4() {
            65_507
        } else {
            65_527
        };
        if rendered.len() > most {
            return Err(ProbeError::TooLargeForUdp {
                target,
                method: request.method,
                bytes: rendered.len(),
                most,
            });
        }
    }
    let (view, provisional, elapsed) = transaction(
        &mut conn,
        target,
        &rendered,
        |view| request.is_answer(view, method, &request.branch),
        None,
        deadline,
    )
    .map_err(|e| e.into_error(target, request.method, timeout))?;
    let mut answer = Answer::read(&view, provisional, elapsed).ok_or(ProbeError::Closed {
        target,
        method: request.method,
        received: None,
    })?;
    if request.method == ProbeMethod::Invite {
        answer.note = close_invite(&mut conn, target, request, &view, local, deadline);
        if answer.status < 300 {
            match remote_target(&view) {
                Ok(uri) => {
                    let secure = uri
                        .get(..5)
                        .is_some_and(|s| s.eq_ignore_ascii_case("sips:"));
                    if secure && target.transport != Transport::Tls {
                        let sips = format!(
                            "the 2xx's Contact {uri} is a sips: URI, to be reached over TLS \
                             (RFC 3261 26.2); the ACK and BYE went to {target}, as every \
                             request of the probe does"
                        );
                        answer.note = Some(match answer.note.take() {
                            Some(note) => format!("{note}; {sips}"),
                            None => sips,
                        });
                    }
                }
                Err(bad) => {
                    answer.fault = Some(format!(
                        "{bad} (RFC 3261 12.1.2: the ACK and BYE go to the Contact's URI); \
                         they went to the INVITE's Request-URI {} instead",
                        request.request_uri
                    ));
                }
            }
        }
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
    // The callee sends its 2xx again until the ACK reaches it (RFC 3261
    // 13.3.1.4); each copy gets the ACK again (13.2.2.4). A 2xx of another
    // fork (another To tag) is another dialog, which this ACK does not
    // acknowledge.
    let to_tag = |v: &SipView| v.to().ok().and_then(|t| t.tag()).map(<[u8]>::to_vec);
    let dialog = to_tag(view);
    let acknowledged = Acknowledged {
        is_copy: &|v: &SipView| {
            request.is_answer(v, "INVITE", &request.branch)
                && v.status().is_some_and(|s| (200..300).contains(&s))
                && to_tag(v) == dialog
        },
        ack: &ack,
    };
    match transaction(
        conn,
        target,
        &bye,
        |v| request.is_answer(v, "BYE", &branch),
        Some(&acknowledged),
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

/// What came back that does not answer the request.
#[derive(Debug, Default)]
struct Strays {
    /// Messages that are not SIP (HTTP, binary, a status outside 100 to
    /// 699), and the first of them.
    not_sip: u32,
    first_not_sip: Option<Bytes>,
    /// SIP messages of another transaction (or requests).
    other: u32,
    /// Over TCP or TLS, the start of an unfinished message (what the
    /// stream held when the wait ended).
    unfinished: Bytes,
}

impl Strays {
    /// `message` as SIP, or `None` (counted) when it is not; CR/LF-only
    /// keep-alives are neither.
    fn sip(&mut self, message: Bytes) -> Option<SipView> {
        if message.iter().all(|b| matches!(b, b'\r' | b'\n')) {
            return None;
        }
        match SipView::parse(message.clone()) {
            Ok(view) => Some(view),
            Err(_) => {
                self.not_sip += 1;
                self.first_not_sip.get_or_insert(message);
                None
            }
        }
    }

    /// What came back, for an error message (empty: nothing).
    fn describe(&self) -> Vec<String> {
        let mut parts = Vec::new();
        if let Some(first) = &self.first_not_sip {
            parts.push(match self.not_sip {
                1 => format!(
                    "received 1 message that is not a SIP response ({})",
                    sample(first)
                ),
                n => format!(
                    "received {n} messages that are not SIP responses (first: {})",
                    sample(first)
                ),
            });
        }
        match self.other {
            0 => {}
            1 => parts.push("received 1 SIP message that does not answer it".into()),
            n => parts.push(format!("received {n} SIP messages that do not answer it")),
        }
        if !self.unfinished.is_empty() {
            parts.push(format!(
                "received an unfinished message ({})",
                sample(&self.unfinished)
            ));
        }
        parts
    }
}

/// `bytes` for a message: their length and the first [`SAMPLE_BYTES`],
/// escaped (`\r`, `\n`, `\x1b`): `38 bytes "HTTP/1.1 200 OK\r\nContent-Le..."`.
fn sample(bytes: &[u8]) -> String {
    let shown = &bytes[..bytes.len().min(SAMPLE_BYTES)];
    let more = if shown.len() < bytes.len() { "..." } else { "" };
    format!("{} bytes \"{}{more}\"", bytes.len(), shown.escape_ascii())
}

/// Why a transaction ended without a final answer.
enum Wait {
    /// `unreachable`: how many ICMP port unreachable reports came back.
    Timeout {
        sent: u32,
        unreachable: u32,
        provisional: Vec<u16>,
        strays: Strays,
    },
    Closed(Strays),
    /// The stream's bytes cannot be framed (and what they start with).
    NotSip(FramingError, Bytes),
    Io(io::Error),
}

impl Wait {
    fn into_error(self, target: Endpoint, method: ProbeMethod, timeout: Duration) -> ProbeError {
        match self {
            Self::Timeout {
                sent,
                unreachable,
                provisional,
                strays,
            } => {
                let mut parts = vec![format!("sent {sent} time(s)")];
                if let Some(code) = provisional.last() {
                    parts.push(format!("last provisional answer {code}"));
                }
                parts.extend(strays.describe());
                if unreachable > 0 {
                    parts.push(format!(
                        "{unreachable} answered by ICMP port unreachable: nothing listens there"
                    ));
                }
                if parts.len() == 1 {
                    parts.push("nothing came back".into());
                }
                ProbeError::Timeout {
                    target,
                    method,
                    timeout,
                    detail: parts.join(", "),
                }
            }
            Self::Closed(strays) => ProbeError::Closed {
                target,
                method,
                received: Some(strays.describe().join(", ")).filter(|r| !r.is_empty()),
            },
            Self::NotSip(error, start) => ProbeError::NotSip {
                target,
                method,
                detail: format!("{error} ({})", sample(&start)),
            },
            Self::Io(source) => ProbeError::Io { target, source },
        }
    }
}

/// A 2xx the probe has acknowledged, while it waits for another answer.
struct Acknowledged<'a> {
    /// Whether a message is a copy of that 2xx.
    is_copy: &'a dyn Fn(&SipView) -> bool,
    /// The ACK, sent again for each copy.
    ack: &'a [u8],
}

/// Sends `bytes` (again over UDP, on RFC 3261 timers, until an answer
/// comes) and waits for the final response that `is_answer`: it, the
/// provisional statuses before it, the time it took. A copy of the 2xx
/// `acknowledged` names gets its ACK again.
fn transaction(
    conn: &mut Conn,
    target: Endpoint,
    bytes: &[u8],
    is_answer: impl Fn(&SipView) -> bool,
    acknowledged: Option<&Acknowledged<'_>>,
    deadline: Instant,
) -> Result<(SipView, Vec<u16>, Duration), Wait> {
    let start = Instant::now();
    conn.send(bytes).map_err(Wait::Io)?;
    let mut sent = 1;
    let mut interval = T1;
    let mut resend_at = (target.transport == Transport::Udp).then(|| start + interval);
    let mut unreachable = 0;
    let mut provisional = Vec::new();
    let mut strays = Strays::default();
    loop {
        let wake = resend_at.map_or(deadline, |at| at.min(deadline));
        match conn.recv(wake)? {
            // Nobody listens there (yet): wait for the next resend as after
            // silence, never resend at once (each resend would draw another
            // report, a flood).
            Heard::Unreachable => unreachable += 1,
            Heard::Message(message) => {
                let Some(view) = strays.sip(message) else {
                    continue;
                };
                if !is_answer(&view) {
                    match acknowledged {
                        Some(a) if (a.is_copy)(&view) => conn.send(a.ack).map_err(Wait::Io)?,
                        _ => strays.other += 1,
                    }
                    continue;
                }
                match view.status() {
                    // RFC 3261 17.1.1.2 and 17.1.2.2: a provisional answer
                    // ends an INVITE's resends (Timer A); another request
                    // is still sent again, at most T2 apart (Timer E in
                    // Proceeding), since its final answer may be lost.
                    Some(code) if code < 200 => {
                        provisional.push(code);
                        if bytes.starts_with(b"INVITE ") {
                            resend_at = None;
                        } else {
                            interval = T2;
                        }
                    }
                    _ => return Ok((view, provisional, start.elapsed())),
                }
            }
            Heard::Closed => {
                strays.unfinished = conn.unfinished();
                return Err(Wait::Closed(strays));
            }
            Heard::Nothing if Instant::now() >= deadline => {
                strays.unfinished = conn.unfinished();
                return Err(Wait::Timeout {
                    sent,
                    unreachable,
                    provisional,
                    strays,
                });
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
    /// The peer closed the connection (TCP, TLS).
    Closed,
}

/// An open socket toward the target.
enum Conn {
    /// Connected to the target: only its datagrams are received.
    Udp(UdpSocket),
    Tcp(Stream<Deadlined>),
    Tls(Box<Stream<SslStream<Deadlined>>>),
}

/// A byte stream, the probe's deadline, and what was read of it.
struct Stream<S> {
    io: S,
    deadline: Instant,
    buf: BytesMut,
    framer: StreamFramer,
}

/// A TCP socket whose every read and write gives up at `until`. A timeout
/// set once before a read would not do: OpenSSL reads a TLS record in as
/// many socket reads as its bytes arrive in, and each would get the whole
/// timeout again (a peer sending a byte a second would hold the probe
/// forever).
struct Deadlined {
    tcp: TcpStream,
    until: Instant,
}

impl Read for Deadlined {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = remaining(self.until).ok_or(io::ErrorKind::TimedOut)?;
        self.tcp.set_read_timeout(Some(left))?;
        self.tcp.read(buf)
    }
}

impl Write for Deadlined {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let left = remaining(self.until).ok_or(io::ErrorKind::TimedOut)?;
        self.tcp.set_write_timeout(Some(left))?;
        self.tcp.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.tcp.flush()
    }
}

/// The [`Deadlined`] socket under a stream, plain or in TLS.
trait OverSocket: Read + Write {
    fn socket(&mut self) -> &mut Deadlined;
}

impl OverSocket for Deadlined {
    fn socket(&mut self) -> &mut Deadlined {
        self
    }
}

impl OverSocket for SslStream<Deadlined> {
    fn socket(&mut self) -> &mut Deadlined {
        self.get_mut()
    }
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
        let io = Deadlined {
            tcp: socket,
            until: deadline,
        };
        if target.transport == Transport::Tcp {
            return Ok(Self::Tcp(Stream::new(io, deadline)));
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
        let io = tls
            .connector
            .connect(&name, io)
            .map_err(|e| handshake_error(target, e))?;
        Ok(Self::Tls(Box::new(Stream::new(io, deadline))))
    }

    /// The local address, as the request's Via and Contact name it (the
    /// unspecified address of a UDP socket replaced by the one the kernel
    /// routes from).
    fn local_addr(&mut self, target: Endpoint) -> Result<SocketAddr, ProbeError> {
        let io = |source| ProbeError::Io { target, source };
        match self {
            Self::Udp(socket) => socket.local_addr().map_err(io),
            Self::Tcp(s) => s.io.socket().tcp.local_addr().map_err(io),
            Self::Tls(s) => s.io.socket().tcp.local_addr().map_err(io),
        }
    }

    fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Self::Udp(socket) => socket.send(bytes).map(drop),
            Self::Tcp(s) => s.send(bytes),
            Self::Tls(s) => s.send(bytes),
        }
    }

    /// What a stream holds of a message it has not finished (empty for
    /// UDP).
    fn unfinished(&self) -> Bytes {
        match self {
            Self::Udp(_) => Bytes::new(),
            Self::Tcp(s) => Bytes::copy_from_slice(&s.buf),
            Self::Tls(s) => Bytes::copy_from_slice(&s.buf),
        }
    }

    /// The next message, or what came instead before `until`.
    fn recv(&mut self, until: Instant) -> Result<Heard, Wait> {
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
            Self::Tcp(s) => s.recv(until),
            Self::Tls(s) => s.recv(until),
        }
    }
}

impl<S: OverSocket> Stream<S> {
    fn new(io: S, deadline: Instant) -> Self {
        Self {
            io,
            deadline,
            buf: BytesMut::new(),
            framer: StreamFramer::new(MAX_MESSAGE_BYTES),
        }
    }

    /// Writes all of `bytes` before the probe's deadline.
    fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.io.socket().until = self.deadline;
        self.io.write_all(bytes)?;
        self.io.flush()
    }

    fn recv(&mut self, until: Instant) -> Result<Heard, Wait> {
        loop {
            match self.framer.decode(&mut self.buf) {
                Ok(Some(Frame::Message(m))) => return Ok(Heard::Message(m)),
                Ok(Some(Frame::Ping)) => continue,
                Ok(None) => {}
                Err(e) => return Err(Wait::NotSip(e, Bytes::copy_from_slice(&self.buf))),
            }
            if remaining(until).is_none() {
                return Ok(Heard::Nothing);
            }
            self.io.socket().until = until;
            let mut chunk = [0u8; 8192];
            match self.io.read(&mut chunk) {
                Ok(0) => return Ok(Heard::Closed),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if is_timeout(&e) => return Ok(Heard::Nothing),
                // A reset (a ban, a limit, a listener going away) closes
                // the connection as much as a FIN does.
                Err(e) if is_reset(&e) => return Ok(Heard::Closed),
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

fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
    )
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Why the handshake failed, in OpenSSL's words without its error codes
/// and source files.
fn handshake_error(target: Endpoint, e: HandshakeError<Deadlined>) -> ProbeError {
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

#[cfg(test)]
mod tests;
