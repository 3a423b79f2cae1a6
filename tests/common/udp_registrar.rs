//! A UDP registrar stub on 127.0.0.1 for the real binary to relay to: a
//! thread that answers `200 OK` to every request and counts them; or one
//! that ignores the first copy of every request (a lost datagram), or one
//! that answers nothing ([`Behaviour`]).
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// How the stub treats requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// `200 OK` to every copy.
    AnswerAll,
    /// Nothing to the first copy of each request (as if the datagram were
    /// lost), `200 OK` to every later copy.
    IgnoreFirstCopy,
    /// Nothing, ever.
    Silent,
    /// `200 OK` to every copy, sent three times (as a registrar resends a
    /// final response: for each copy of the request it gets, or an INVITE's
    /// until it is acknowledged).
    AnswerThrice,
    /// `200 OK` to the first copy of each request, this long after it came
    /// (later copies are not answered).
    AnswerFirstAfter(Duration),
    /// `180 Ringing` to an INVITE, then nothing more, to it or anything
    /// else (a registrar that died while the call rang).
    RingThenDie,
    /// `180 Ringing` to an INVITE, then nothing until its CANCEL: then
    /// `200 OK` to the CANCEL and `487 Request Terminated` to the INVITE,
    /// once per copy of the CANCEL (a registrar that came back).
    RingThenAnswerCancel,
    /// `486 Busy Here` to an INVITE, `200 OK` to the rest; the first ACK
    /// of each 486 is taken for lost: the 486 is sent again (RFC 3261
    /// 17.2.1, Timer G).
    BusyAndLoseFirstAck,
}

/// The stub; stops its thread on drop.
pub struct Registrar {
    /// Where it listens.
    pub addr: SocketAddr,
    /// How many requests it has received (every copy).
    pub received: Arc<AtomicUsize>,
    /// Copies received per request (Call-ID and CSeq line).
    pub copies: Arc<Mutex<HashMap<String, usize>>>,
    /// Every request received (probes excepted), as text, in order.
    pub requests: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Registrar {
    /// Bind port 0 of 127.0.0.1 and start answering every request.
    pub fn start() -> Self {
        Self::start_with(Behaviour::AnswerAll)
    }

    /// Bind `addr` and start answering every request (a registrar coming
    /// back on the address of one that went away).
    pub fn start_on(addr: SocketAddr) -> Self {
        Self::serve(UdpSocket::bind(addr).unwrap(), Behaviour::AnswerAll)
    }

    /// Bind port 0 of 127.0.0.1 and treat requests as `behaviour` says.
    pub fn start_with(behaviour: Behaviour) -> Self {
        Self::serve(UdpSocket::bind("127.0.0.1:0").unwrap(), behaviour)
    }

    /// Answer on `socket` as `behaviour` says.
    fn serve(socket: UdpSocket, behaviour: Behaviour) -> Self {
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let addr = socket.local_addr().unwrap();
        let received = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let copies = Arc::new(Mutex::new(HashMap::new()));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (count, stopped, seen) = (received.clone(), stop.clone(), copies.clone());
        let kept = requests.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            // The 486 of each Call-ID, to send again for a lost ACK.
            let mut busy: HashMap<String, String> = HashMap::new();
            while !stopped.load(Ordering::Relaxed) {
                let Ok((n, from)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                let request = String::from_utf8_lossy(&buf[..n]);
                if request.starts_with("SIP/2.0") {
                    continue;
                }
                // sipadmit's own OPTIONS probes are answered, not counted.
                if request.contains("Call-ID: sipadmit-probe-") {
                    if behaviour != Behaviour::Silent {
                        socket.send_to(ok(&request).as_bytes(), from).unwrap();
                    }
                    continue;
                }
                count.fetch_add(1, Ordering::Relaxed);
                kept.lock().unwrap().push(request.to_string());
                let copy = {
                    let mut seen = seen.lock().unwrap();
                    let n = seen.entry(transaction_of(&request)).or_insert(0);
                    *n += 1;
                    *n
                };
                if behaviour == Behaviour::BusyAndLoseFirstAck {
                    let call_id = transaction_of(&request);
                    let call_id = call_id.split('|').next().unwrap_or_default();
                    let answer = if request.starts_with("ACK ") {
                        busy.get(call_id).filter(|_| copy == 1).cloned()
                    } else if request.starts_with("INVITE ") {
                        let answer = respond(&request, "486 Busy Here");
                        busy.insert(call_id.to_owned(), answer.clone());
                        Some(answer)
                    } else {
                        Some(ok(&request))
                    };
                    if let Some(answer) = answer {
                        socket.send_to(answer.as_bytes(), from).unwrap();
                    }
                    continue;
                }
                if matches!(
                    behaviour,
                    Behaviour::RingThenDie | Behaviour::RingThenAnswerCancel
                ) {
                    if request.starts_with("INVITE ") && copy == 1 {
                        let ringing = respond(&request, "180 Ringing");
                        socket.send_to(ringing.as_bytes(), from).unwrap();
                    }
                    if behaviour == Behaviour::RingThenAnswerCancel
                        && request.starts_with("CANCEL ")
                    {
                        socket.send_to(ok(&request).as_bytes(), from).unwrap();
                        let invite = request.replace(" CANCEL\r\n", " INVITE\r\n");
                        let terminated = respond(&invite, "487 Request Terminated");
                        socket.send_to(terminated.as_bytes(), from).unwrap();
                    }
                    continue;
                }
                let answers = match behaviour {
                    Behaviour::BusyAndLoseFirstAck
                    | Behaviour::RingThenDie
                    | Behaviour::RingThenAnswerCancel => 0,
                    Behaviour::AnswerAll => 1,
                    Behaviour::IgnoreFirstCopy => usize::from(copy > 1),
                    Behaviour::Silent => 0,
                    Behaviour::AnswerThrice => 3,
                    Behaviour::AnswerFirstAfter(delay) => {
                        if copy == 1 {
                            std::thread::sleep(delay);
                        }
                        usize::from(copy == 1)
                    }
                };
                for _ in 0..answers {
                    socket.send_to(ok(&request).as_bytes(), from).unwrap();
                }
            }
        });
        Self {
            addr,
            received,
            copies,
            requests,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Registrar {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `200 OK` to `request`: its Vias, From, To (tagged), Call-ID, CSeq, Contact.
pub fn ok(request: &str) -> String {
    respond(request, "200 OK")
}

/// A response with `status` (code and reason) to `request`, as [`ok`].
fn respond(request: &str, status: &str) -> String {
    let mut out = format!("SIP/2.0 {status}\r\n");
    for line in request.split("\r\n").skip(1) {
        let name = line.split(':').next().unwrap_or("").trim();
        let name = name.to_ascii_lowercase();
        if ["via", "from", "to", "call-id", "cseq", "contact"].contains(&name.as_str()) {
            out.push_str(line);
            if name == "to" && !line.contains("tag=") {
                out.push_str(";tag=reg");
            }
            out.push_str("\r\n");
        }
    }
    out.push_str("Content-Length: 0\r\n\r\n");
    out
}

/// What tells the copies of one request apart from other requests: its
/// Call-ID and CSeq lines.
fn transaction_of(request: &str) -> String {
    request
        .split("\r\n")
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            l.starts_with("call-id:") || l.starts_with("cseq:")
        })
        .collect::<Vec<_>>()
        .join("|")
}
