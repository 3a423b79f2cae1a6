//! A minimal SIP user agent over any byte stream (TLS from
//! `tests/common/tls.rs`, or TCP), for tests where SIPp cannot be used
//! (Debian's SIPp has no TLS): send a message, read one framed by
//! Content-Length (keep-alive CRLFs skipped), build requests and answers.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// A response to `request` as a UAS writes it: `status` (code and
/// reason), its Vias, From, To (tagged `to_tag` when it has no tag),
/// Call-ID and CSeq (long or compact names), then the `extra` header lines
/// (each ending in CRLF), and no body.
pub fn uas_response(request: &str, status: &str, to_tag: &str, extra: &str) -> String {
    let mut out = format!("SIP/2.0 {status}\r\n");
    for line in request.split("\r\n").skip(1) {
        let name = line
            .split(':')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if ["via", "from", "to", "call-id", "cseq", "v", "f", "t", "i"].contains(&name.as_str()) {
            out.push_str(line);
            if (name == "to" || name == "t") && !line.contains("tag=") {
                out.push_str(";tag=");
                out.push_str(to_tag);
            }
            out.push_str("\r\n");
        }
    }
    out.push_str(extra);
    out.push_str("Content-Length: 0\r\n\r\n");
    out
}

/// The status line of the next response on a blocking stream, its
/// headers read past (every response read this way has no body).
pub fn read_status(reader: &mut std::io::BufReader<std::net::TcpStream>) -> String {
    use std::io::BufRead;
    let mut status = String::new();
    reader.read_line(&mut status).expect("a status line");
    loop {
        let mut line = String::new();
        let n = reader.read_line(&mut line).expect("a header line");
        assert!(n > 0, "connection closed after {status:?}");
        if line == "\r\n" {
            return status;
        }
    }
}

/// What a read brought.
#[derive(Debug)]
pub enum Received {
    /// One whole message.
    Message(String),
    /// The peer closed (or reset) the connection.
    Closed,
    /// Nothing within the wait.
    Timeout,
}

impl Received {
    /// The message, or a panic naming what came instead.
    pub fn message(self, what: &str) -> String {
        match self {
            Self::Message(m) => m,
            other => panic!("{what}: expected a message, got {other:?}"),
        }
    }
}

/// One SIP connection.
pub struct SipStream<S> {
    /// The stream (e.g. to look at its TLS session).
    pub stream: S,
    buffer: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> SipStream<S> {
    /// Wrap a connected stream.
    pub fn new(stream: S) -> Self {
        Self {
            stream,
            buffer: Vec::new(),
        }
    }

    /// Write `message` (whole).
    pub async fn send(&mut self, message: &str) -> std::io::Result<()> {
        self.stream.write_all(message.as_bytes()).await?;
        self.stream.flush().await
    }

    /// The next message, waiting at most `wait`.
    pub async fn recv(&mut self, wait: Duration) -> Received {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(message) = self.take_message() {
                return Received::Message(message);
            }
            let mut chunk = [0u8; 16 * 1024];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return Received::Timeout,
                Ok(Ok(0) | Err(_)) => return Received::Closed,
                Ok(Ok(n)) => self.buffer.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// The next request or response whose start line begins with `start`,
    /// skipping others (provisional responses, say), waiting at most `wait`.
    pub async fn recv_starting(&mut self, start: &str, wait: Duration) -> Received {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.recv(left).await {
                Received::Message(m) if !m.starts_with(start) => continue,
                other => return other,
            }
        }
    }

    fn take_message(&mut self) -> Option<String> {
        take_message(&mut self.buffer)
    }
}

/// The first whole SIP message at the front of `buffer` (Content-Length
/// framing; keep-alive CRLFs before it skipped), taken out of it; `None`
/// until one is complete.
pub fn take_message(buffer: &mut Vec<u8>) -> Option<String> {
    let skip = buffer
        .iter()
        .take_while(|&&b| b == b'\r' || b == b'\n')
        .count();
    buffer.drain(..skip);
    let end = buffer.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buffer[..end]).into_owned();
    let length: usize = header(&head, "Content-Length")
        .first()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if buffer.len() < end + length {
        return None;
    }
    let message: Vec<u8> = buffer.drain(..end + length).collect();
    Some(String::from_utf8_lossy(&message).into_owned())
}

/// The values of a header (any case, compact form too), in order; comma
/// lists not split.
pub fn header<'a>(message: &'a str, name: &str) -> Vec<&'a str> {
    let compact = match name.to_ascii_lowercase().as_str() {
        "via" => "v",
        "from" => "f",
        "to" => "t",
        "call-id" => "i",
        "contact" => "m",
        "content-length" => "l",
        "content-type" => "c",
        _ => name,
    };
    let head = message.split("\r\n\r\n").next().unwrap_or_default();
    head.split("\r\n")
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .filter(|(n, _)| {
            n.trim().eq_ignore_ascii_case(name) || n.trim().eq_ignore_ascii_case(compact)
        })
        .map(|(_, v)| v.trim())
        .collect()
}

/// The first value of a header, or "" when there is none.
fn first<'a>(message: &'a str, name: &str) -> &'a str {
    header(message, name).first().copied().unwrap_or_default()
}

/// Every value of a header, comma lists split (Record-Route, Route, Path).
pub fn header_values<'a>(message: &'a str, name: &str) -> Vec<&'a str> {
    header(message, name)
        .into_iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect()
}

/// The status code of a response (0 for a request).
pub fn status(message: &str) -> u16 {
    message
        .strip_prefix("SIP/2.0 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

/// A user agent's identity on one connection.
#[derive(Clone, Debug)]
pub struct Agent {
    /// User part of its address of record (`sip:USER@contoso.com`).
    pub user: String,
    /// Its User-Agent.
    pub user_agent: String,
    /// Its end of the connection (Via, Contact).
    pub local: SocketAddr,
    /// Via transport (`TLS`, `TCP`).
    pub transport: &'static str,
}

impl Agent {
    /// An agent at `local` over `transport`.
    pub fn new(user: &str, user_agent: &str, local: SocketAddr, transport: &'static str) -> Self {
        Self {
            user: user.into(),
            user_agent: user_agent.into(),
            local,
            transport,
        }
    }

    /// Its Contact URI.
    pub fn contact(&self) -> String {
        format!(
            "sip:{}@{};transport={}",
            self.user,
            self.local,
            self.transport.to_ascii_lowercase()
        )
    }

    fn via(&self, branch: &str) -> String {
        format!(
            "Via: SIP/2.0/{} {};branch={branch};rport\r\n",
            self.transport, self.local
        )
    }

    /// A REGISTER for its address of record (Supported: path, so the
    /// registrar echoes the Path).
    pub fn register(&self, call_id: &str, cseq: u32) -> String {
        format!(
            "REGISTER sip:contoso.com SIP/2.0\r\n{via}Max-Forwards: 70\r\n\
             From: <sip:{u}@contoso.com>;tag=reg-{u}\r\nTo: <sip:{u}@contoso.com>\r\n\
             Call-ID: {call_id}\r\nCSeq: {cseq} REGISTER\r\nContact: <{contact}>\r\n\
             Supported: path\r\nExpires: 300\r\nUser-Agent: {ua}\r\nContent-Length: 0\r\n\r\n",
            via = self.via(&format!("z9hG4bK-reg-{call_id}-{cseq}")),
            u = self.user,
            contact = self.contact(),
            ua = self.user_agent,
        )
    }

    /// An INVITE to `ruri` (To: the same URI), with a small SDP body.
    pub fn invite(&self, ruri: &str, call_id: &str) -> String {
        let sdp = format!(
            "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n",
            ip = self.local.ip()
        );
        format!(
            "INVITE {ruri} SIP/2.0\r\n{via}Max-Forwards: 70\r\n\
             From: <sip:{u}@contoso.com>;tag=inv-{u}\r\nTo: <{ruri}>\r\nCall-ID: {call_id}\r\n\
             CSeq: 1 INVITE\r\nContact: <{contact}>\r\nUser-Agent: {ua}\r\n\
             Content-Type: application/sdp\r\nContent-Length: {len}\r\n\r\n{sdp}",
            via = self.via(&format!("z9hG4bK-inv-{call_id}")),
            u = self.user,
            contact = self.contact(),
            ua = self.user_agent,
            len = sdp.len(),
        )
    }

    /// An in-dialog request of the dialog an INVITE of this agent created,
    /// answered by `answer` (a 2xx): to its Contact along the reverse of its
    /// Record-Route.
    pub fn in_dialog(&self, method: &str, answer: &str, cseq: u32, branch: &str) -> String {
        let target = header(answer, "Contact")[0]
            .trim_start_matches('<')
            .split('>')
            .next()
            .unwrap()
            .to_owned();
        let mut routes = header_values(answer, "Record-Route");
        routes.reverse();
        let route = if routes.is_empty() {
            String::new()
        } else {
            format!("Route: {}\r\n", routes.join(", "))
        };
        format!(
            "{method} {target} SIP/2.0\r\n{via}{route}Max-Forwards: 70\r\n\
             From: {from}\r\nTo: {to}\r\nCall-ID: {cid}\r\nCSeq: {cseq} {method}\r\n\
             User-Agent: {ua}\r\nContent-Length: 0\r\n\r\n",
            via = self.via(branch),
            from = header(answer, "From")[0],
            to = header(answer, "To")[0],
            cid = header(answer, "Call-ID")[0],
            ua = self.user_agent,
        )
    }

    /// An answer to `request`: Via, From, To (with a tag), Call-ID, CSeq
    /// and Record-Route copied, a Contact for 2xx to INVITE.
    pub fn answer(&self, request: &str, status: &str) -> String {
        let mut out = format!("SIP/2.0 {status}\r\n");
        for via in header(request, "Via") {
            out.push_str(&format!("Via: {via}\r\n"));
        }
        for rr in header(request, "Record-Route") {
            out.push_str(&format!("Record-Route: {rr}\r\n"));
        }
        let to = first(request, "To");
        let to = if to.contains("tag=") {
            to.to_owned()
        } else {
            format!("{to};tag=ans-{}", self.user)
        };
        out.push_str(&format!(
            "From: {}\r\nTo: {to}\r\nCall-ID: {}\r\nCSeq: {}\r\n",
            first(request, "From"),
            first(request, "Call-ID"),
            first(request, "CSeq"),
        ));
        if request.starts_with("INVITE ") && status.starts_with('2') {
            out.push_str(&format!("Contact: <{}>\r\n", self.contact()));
        }
        out.push_str(&format!(
            "User-Agent: {}\r\nContent-Length: 0\r\n\r\n",
            self.user_agent
        ));
        out
    }
}
