//! The probe's messages (pure): the request, the ACK (and, after a 2xx to
//! an INVITE, the BYE) that closes it, and the [`Answer`] read from a final
//! response.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use crate::sip::fields::{check_request_uri, sip_uri_host};
use crate::sip::{HeaderName, SipView, StartLine};
use crate::vocabulary::Transport;

/// The methods a probe sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeMethod {
    /// A REGISTER (`Expires: 0` by default: it leaves no binding).
    Register,
    /// An INVITE without a body, closed by ACK (and BYE after a 2xx).
    Invite,
    /// An OPTIONS.
    Options,
}

impl ProbeMethod {
    /// The method token.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Register => "REGISTER",
            Self::Invite => "INVITE",
            Self::Options => "OPTIONS",
        }
    }
}

impl fmt::Display for ProbeMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A URI given on the command line that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{flag} {value:?}: {reason}")]
pub struct RequestError {
    /// The flag (`--to`, `--from`, `--ua`).
    pub flag: &'static str,
    /// The value given.
    pub value: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// The user part of the default To and From URIs.
const PROBE_USER: &str = "sipadmit-probe";

/// The request a probe sends, with the identifiers that tie its answers
/// to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeRequest {
    /// Method.
    pub method: ProbeMethod,
    /// Request-URI: the To URI, or for a REGISTER its domain (`sip:host`).
    pub request_uri: String,
    /// From URI.
    pub from: String,
    /// To URI.
    pub to: String,
    /// User-Agent value; `None` sends none.
    pub user_agent: Option<String>,
    /// REGISTER `Expires`, seconds.
    pub expires: u32,
    /// Call-ID.
    pub call_id: String,
    /// From tag.
    pub from_tag: String,
    /// Via branch (RFC 3261 magic cookie first).
    pub branch: String,
}

impl ProbeRequest {
    /// A request to `target_host` (an IP as in a URI: IPv6 bracketed).
    /// `to` defaults to `sip:sipadmit-probe@<target_host>`, `from` to the
    /// To URI for a REGISTER and `sip:sipadmit-probe@<To host>` otherwise;
    /// an empty `user_agent` sends no User-Agent. `random` gives the
    /// Call-ID, tag and branch their unique part.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        method: ProbeMethod,
        target_host: &str,
        to: Option<&str>,
        from: Option<&str>,
        user_agent: Option<&str>,
        expires: u32,
        random: u64,
    ) -> Result<Self, RequestError> {
        let to = match to {
            Some(uri) => checked_uri("--to", uri)?,
            None => format!("sip:{PROBE_USER}@{target_host}"),
        };
        let to_host = host_part(&to);
        let from = match (from, method) {
            (Some(uri), _) => checked_uri("--from", uri)?,
            (None, ProbeMethod::Register) => to.clone(),
            (None, _) => format!("sip:{PROBE_USER}@{to_host}"),
        };
        let user_agent = match user_agent {
            Some(ua) if ua.bytes().any(|b| b.is_ascii_control()) => {
                return Err(RequestError {
                    flag: "--ua",
                    value: ua.to_owned(),
                    reason: "a header value cannot hold control characters or line breaks",
                })
            }
            Some("") => None,
            Some(ua) => Some(ua.to_owned()),
            None => Some(concat!("sipadmit-probe/", env!("CARGO_PKG_VERSION")).to_owned()),
        };
        let request_uri = match method {
            ProbeMethod::Register => format!("{}:{to_host}", scheme(&to)),
            _ => to.clone(),
        };
        Ok(Self {
            method,
            request_uri,
            from,
            to,
            user_agent,
            expires,
            call_id: format!("{random:016x}@{PROBE_USER}"),
            from_tag: format!("{:08x}", random >> 32),
            branch: format!("z9hG4bK-probe-{random:016x}"),
        })
    }

    /// The request as sent from `local` over `transport`.
    pub fn render(&self, transport: Transport, local: SocketAddr) -> Vec<u8> {
        let mut extra = String::new();
        if self.method != ProbeMethod::Options {
            extra.push_str(&format!("Contact: <{}>\r\n", contact(transport, local)));
        }
        if self.method == ProbeMethod::Register {
            extra.push_str(&format!("Expires: {}\r\n", self.expires));
        }
        self.message(
            self.method.as_str(),
            &self.request_uri,
            &self.branch,
            &format!("<{}>", self.to),
            1,
            &extra,
            transport,
            local,
        )
    }

    /// The ACK of a non-2xx final answer to the INVITE (RFC 3261
    /// 17.1.1.3): same branch and Request-URI, the answer's To (with tag).
    pub fn ack(&self, answer: &SipView, transport: Transport, local: SocketAddr) -> Vec<u8> {
        let to = answer.header(HeaderName::To).map_or_else(
            || format!("<{}>", self.to),
            |v| String::from_utf8_lossy(v).into_owned(),
        );
        self.message(
            "ACK",
            &self.request_uri,
            &self.branch,
            &to,
            1,
            "",
            transport,
            local,
        )
    }

    /// The ACK and BYE that end the call a 2xx to the INVITE set up (RFC
    /// 3261 13.2.2.4, 15.1.1): to the answer's Contact (its
    /// [`remote_target`]; without a usable one, the INVITE's Request-URI,
    /// so that the 2xx is still acknowledged and the call ended), along its
    /// Record-Route reversed, each in a new transaction.
    pub fn ack_and_bye(
        &self,
        answer: &SipView,
        transport: Transport,
        local: SocketAddr,
    ) -> (Vec<u8>, Vec<u8>) {
        let target = remote_target(answer).unwrap_or_else(|_| self.request_uri.clone());
        let mut routes: Vec<String> = answer
            .headers(HeaderName::RecordRoute)
            .flat_map(crate::sip::fields::split_list)
            .map(|r| String::from_utf8_lossy(r).into_owned())
            .collect();
        routes.reverse();
        let route = if routes.is_empty() {
            String::new()
        } else {
            format!("Route: {}\r\n", routes.join(", "))
        };
        let to = answer.header(HeaderName::To).map_or_else(
            || format!("<{}>", self.to),
            |v| String::from_utf8_lossy(v).into_owned(),
        );
        let ack_branch = format!("{}-ack", self.branch);
        let bye_branch = format!("{}-bye", self.branch);
        (
            self.message(
                "ACK",
                &target,
                &ack_branch,
                &to,
                1,
                &route,
                transport,
                local,
            ),
            self.message(
                "BYE",
                &target,
                &bye_branch,
                &to,
                2,
                &route,
                transport,
                local,
            ),
        )
    }

    /// One request of the probe's dialog.
    #[allow(clippy::too_many_arguments)]
    fn message(
        &self,
        method: &str,
        request_uri: &str,
        branch: &str,
        to: &str,
        cseq: u32,
        extra: &str,
        transport: Transport,
        local: SocketAddr,
    ) -> Vec<u8> {
        let user_agent = self
            .user_agent
            .as_ref()
            .map(|ua| format!("User-Agent: {ua}\r\n"))
            .unwrap_or_default();
        format!(
            "{method} {request_uri} SIP/2.0\r\n\
             Via: SIP/2.0/{} {local};branch={branch};rport\r\n\
             Max-Forwards: 70\r\n\
             From: <{}>;tag={}\r\n\
             To: {to}\r\n\
             Call-ID: {}\r\n\
             CSeq: {cseq} {method}\r\n\
             {extra}{user_agent}Content-Length: 0\r\n\r\n",
            transport.via_name(),
            self.from,
            self.from_tag,
            self.call_id,
        )
        .into_bytes()
    }

    /// Whether `view` answers this request (or, with `method`, its ACK or
    /// BYE): a response whose top Via branch and CSeq method match.
    pub fn is_answer(&self, view: &SipView, method: &str, branch: &str) -> bool {
        !view.is_request()
            && view
                .top_via()
                .ok()
                .and_then(|via| via.branch())
                .is_some_and(|b| b == branch.as_bytes())
            && view
                .cseq()
                .is_ok_and(|c| c.method.eq_ignore_ascii_case(method.as_bytes()))
    }
}

/// Why a 2xx to the INVITE names no remote target (RFC 3261 12.1.2: the
/// URI of its Contact, where the dialog's requests go).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadContact {
    /// The 2xx has no Contact.
    #[error("it has no Contact")]
    Missing,
    /// Its Contact is `*`, unreadable, or not a `sip:`/`sips:` URI usable
    /// as a Request-URI.
    #[error("its `Contact: {0}` is not a SIP or SIPS URI")]
    NotSipUri(String),
}

/// The remote target of the dialog a 2xx to the INVITE set up: the URI of
/// its (first) Contact, when it is a `sip:` or `sips:` URI usable as a
/// Request-URI.
pub fn remote_target(answer: &SipView) -> Result<String, BadContact> {
    let raw = answer
        .header(HeaderName::Contact)
        .ok_or(BadContact::Missing)?;
    let bad = || BadContact::NotSipUri(String::from_utf8_lossy(raw).trim().to_owned());
    let contact = answer
        .contacts()
        .next()
        .and_then(Result::ok)
        .ok_or_else(bad)?;
    let uri = contact.uri;
    let scheme = uri.split(|&b| b == b':').next().unwrap_or_default();
    let sip = scheme.eq_ignore_ascii_case(b"sip") || scheme.eq_ignore_ascii_case(b"sips");
    if !sip || check_request_uri(uri).is_err() {
        return Err(bad());
    }
    Ok(String::from_utf8_lossy(uri).into_owned())
}

/// The Contact URI of the probe at `local`.
fn contact(transport: Transport, local: SocketAddr) -> String {
    match transport {
        Transport::Udp => format!("sip:{PROBE_USER}@{local}"),
        stream => format!("sip:{PROBE_USER}@{local};transport={stream}"),
    }
}

/// A `sip:` or `sips:` URI (the scheme in any case, RFC 3261 19.1.4),
/// checked as a Request-URI would be.
fn checked_uri(flag: &'static str, uri: &str) -> Result<String, RequestError> {
    let scheme = uri.split_once(':').map(|(scheme, _)| scheme);
    let sip =
        scheme.is_some_and(|s| s.eq_ignore_ascii_case("sip") || s.eq_ignore_ascii_case("sips"));
    let reason = if !sip {
        Some("expected a sip: or sips: URI, e.g. sip:helpdesk@contoso.com")
    } else if check_request_uri(uri.as_bytes()).is_err() {
        Some("not a well-formed SIP URI (no spaces or <>; IPv6 hosts in brackets)")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(RequestError {
            flag,
            value: uri.to_owned(),
            reason,
        }),
        None => Ok(uri.to_owned()),
    }
}

/// `sip` or `sips`.
fn scheme(uri: &str) -> &str {
    uri.split_once(':').map_or("sip", |(s, _)| s)
}

/// The `host[:port]` of a checked URI.
fn host_part(uri: &str) -> String {
    sip_uri_host(uri.as_bytes()).map_or_else(String::new, |(host, port)| {
        let host = String::from_utf8_lossy(host);
        port.map_or_else(|| host.to_string(), |p| format!("{host}:{p}"))
    })
}

/// A final response, as the probe reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Status code (200 to 699).
    pub status: u16,
    /// Reason phrase.
    pub reason: String,
    /// Every `Warning` value, in order.
    pub warnings: Vec<String>,
    /// Every `ms-diagnostics` value, in order.
    pub ms_diagnostics: Vec<String>,
    /// The provisional statuses received before it.
    pub provisional: Vec<u16>,
    /// From sending the request to receiving the answer.
    pub elapsed: Duration,
    /// What went wrong closing the call after a 2xx to an INVITE, if
    /// anything (the answer stands).
    pub note: Option<String>,
    /// How the answer breaks the protocol, if it does (a 2xx to the INVITE
    /// without a usable Contact): the probe fails whatever the status.
    pub fault: Option<String>,
}

impl Answer {
    /// Reads a final response (`None` for a request or a 1xx).
    pub fn read(view: &SipView, provisional: Vec<u16>, elapsed: Duration) -> Option<Self> {
        let StartLine::Response { code, reason_span } = view.start_line() else {
            return None;
        };
        let values = |name: &str| {
            view.fields_named(name)
                .map(|f| String::from_utf8_lossy(view.slice(f.value_span)).into_owned())
                .collect()
        };
        (code >= 200).then(|| Self {
            status: code,
            reason: String::from_utf8_lossy(view.slice(reason_span)).into_owned(),
            warnings: values("Warning"),
            ms_diagnostics: values("ms-diagnostics"),
            provisional,
            elapsed,
            note: None,
            fault: None,
        })
    }
}

#[cfg(test)]
mod tests;
