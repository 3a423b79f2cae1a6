//! The record format, and the writer: everything written by shutdown,
//! a stalled reader stalling only the writer, reopen after rename, no torn
//! lines after a failed write. Nothing here asserts a duration: what was
//! written is checked by content once the writer has finished.

use std::sync::atomic::AtomicUsize;

use super::*;

/// The longest any test waits for the writer before failing.
const BOUND: Duration = Duration::from_secs(10);

fn record(n: usize) -> DecisionRecord {
    DecisionRecord {
        ts: Timestamp::from_millisecond(1_795_740_000_000 + n as i64).unwrap(),
        transport: Transport::Udp,
        source: "192.0.2.7:5060".parse().unwrap(),
        local: Some("192.0.2.1:5060".parse().unwrap()),
        leg: Some(Leg::FromClient),
        method: "REGISTER".into(),
        call_id: format!("call-{n}@test"),
        from: "sip:alice@contoso.com".into(),
        to: "sip:alice@contoso.com".into(),
        request_uri: "sip:contoso.com".into(),
        user_agent: Some("UCCAPI/15.0.4481.1000 OC/15.0.4481.1000 (Microsoft Lync)".into()),
        client: "lync-2013".into(),
        sender_client: "lync-2013".into(),
        category: Category::Desktop,
        support: Support::Supported,
        role: SessionRole::None,
        kind: Some(DecisionKind::Policy),
        action: Action::Allow,
        rule: Cow::Borrowed("none.default"),
        client_rule: "lync-2013#1".into(),
        status: None,
        mode: Mode::Enforce,
        would_reject: false,
        generation: 1,
        spiral: false,
        after_challenge: false,
        unregister: false,
        undelivered: false,
    }
}

fn line(n: usize) -> String {
    serde_json::to_string(&record(n)).unwrap()
}

fn call_ids(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| {
            serde_json::from_str::<DecisionRecord>(l)
                .unwrap_or_else(|e| panic!("{e}: {l:?}"))
                .call_id
        })
        .collect()
}

fn ids(range: impl IntoIterator<Item = usize>) -> Vec<String> {
    range
        .into_iter()
        .map(|n| format!("call-{n}@test"))
        .collect()
}

/// The answer to a request, within [`BOUND`].
fn answered<T>(mut rx: oneshot::Receiver<T>) -> T {
    let deadline = Instant::now() + BOUND;
    loop {
        match rx.try_recv() {
            Ok(v) => return v,
            Err(oneshot::error::TryRecvError::Empty) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("the writer did not answer: {e}"),
        }
    }
}

// === records ===

#[test]
fn records_round_trip_through_their_json_line() {
    let mut offer = record(1);
    offer.transport = Transport::Tcp;
    offer.source = "[2001:db8::1]:5061".parse().unwrap();
    offer.method = "INVITE".into();
    offer.user_agent = None;
    offer.client = "lync-mobile".into();
    offer.category = Category::Mobile;
    offer.support = Support::Unsupported;
    offer.role = SessionRole::AgentOffer;
    offer.action = Action::Reject;
    offer.rule = Cow::Borrowed("agent-offer.unsupported");
    offer.status = Some(480);
    let mut monitored = record(2);
    monitored.category = Category::ThirdParty;
    monitored.support = Support::ThirdParty;
    monitored.role = SessionRole::AgentRegistration;
    monitored.action = Action::Flag;
    monitored.mode = Mode::Monitor;
    monitored.would_reject = true;
    monitored.generation = 7;
    for r in [record(0), offer, monitored] {
        let json = serde_json::to_string(&r).unwrap();
        let back: DecisionRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r, "{json}");
        assert_eq!(serde_json::to_string(&back).unwrap(), json);
    }
}

#[test]
fn records_carry_the_contract_field_names_and_spellings() {
    let mut r = record(0);
    r.ts = Timestamp::from_millisecond(1_795_740_000_000 + 653).unwrap();
    r.transport = Transport::Tcp;
    r.category = Category::ThirdParty;
    r.support = Support::ThirdParty;
    r.role = SessionRole::AgentOffer;
    r.action = Action::Drop;
    r.mode = Mode::Monitor;
    let v: serde_json::Value = serde_json::to_value(&r).unwrap();
    // design.md section 3.
    for key in [
        "ts",
        "transport",
        "source",
        "method",
        "call_id",
        "from",
        "to",
        "request_uri",
        "user_agent",
        "client",
        "category",
        "support",
        "role",
        "action",
        "rule",
        "status",
        "mode",
    ] {
        assert!(v.get(key).is_some(), "{key} missing from {v}");
    }
    assert_eq!(v["ts"], "2026-11-27T00:40:00.653Z");
    assert_eq!(v["transport"], "tcp");
    assert_eq!(v["source"], "192.0.2.7:5060");
    assert_eq!(v["category"], "third-party");
    assert_eq!(v["support"], "third-party");
    assert_eq!(v["role"], "agent-offer");
    assert_eq!(v["action"], "drop");
    assert_eq!(v["mode"], "monitor");
    assert_eq!(v["status"], serde_json::Value::Null);
    assert_eq!(v["generation"], 1);
    let none = serde_json::to_value(SessionRole::None).unwrap();
    assert_eq!(none, "none");
    let registration = serde_json::to_value(SessionRole::AgentRegistration).unwrap();
    assert_eq!(registration, "agent-registration");
}

#[test]
fn timestamps_keep_milliseconds_even_when_zero() {
    let mut r = record(0);
    r.ts = Timestamp::from_second(951_782_400).unwrap();
    let v = serde_json::to_value(&r).unwrap();
    assert_eq!(v["ts"], "2000-02-29T00:00:00.000Z");
    let now = record_time();
    assert_eq!(now.subsec_nanosecond() % 1_000_000, 0);
    let mut r = record(0);
    r.ts = now;
    let back: DecisionRecord = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
    assert_eq!(back.ts, now);
}

#[test]
fn a_record_without_a_generation_reads_as_generation_zero() {
    let mut v = serde_json::to_value(record(0)).unwrap();
    v.as_object_mut().unwrap().remove("generation");
    let r: DecisionRecord = serde_json::from_value(v).unwrap();
    assert_eq!(r.generation, 0);
}

// === the writer ===

/// A log the writer creates is readable by its owner and group only: the
/// records name users, numbers and addresses.
#[cfg(unix)]
#[test]
fn a_new_log_file_is_created_0640() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("decisions.jsonl");
    let (log, writer) = DecisionLog::open(path.to_str().unwrap()).unwrap();
    log.submit(record(1));
    assert!(writer.shutdown(BOUND).finished);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        mode & 0o037,
        0,
        "no group write, nothing for others: {mode:o}"
    );
    assert_eq!(mode & 0o600, 0o600, "{mode:o}");
}

#[test]
fn everything_submitted_is_in_the_file_after_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("decisions.jsonl");
    std::fs::write(&path, format!("{}\n", line(9999))).unwrap();
    let (log, writer) = DecisionLog::open(path.to_str().unwrap()).unwrap();
    for n in 0..500 {
        log.submit(record(n));
    }
    let report = writer.shutdown(BOUND);
    assert!(report.finished);
    assert_eq!((report.written, report.dropped, report.lost), (500, 0, 0));
    let text = std::fs::read_to_string(&path).unwrap();
    let mut expected = ids([9999]);
    expected.extend(ids(0..500));
    assert_eq!(call_ids(&text), expected, "appended, in order");
    // After shutdown, records are dropped and counted, not queued.
    log.submit(record(500));
    assert_eq!(log.dropped(), 1);
    assert!(matches!(
        answered(log.reopen()),
        Err(DecisionLogError::Stopped)
    ));
}

/// Trial 22: a file left ending in an unfinished line (a crash in the
/// middle of a write) gets its next record on a line of its own, not glued
/// to that line: only the torn record is lost, at open and at a reopen.
#[test]
fn a_file_left_ending_in_an_unfinished_line_gets_records_on_lines_of_their_own() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("decisions.jsonl");
    let torn = &line(9998)[..40];
    std::fs::write(&path, format!("{}\n{torn}", line(9999))).unwrap();
    let (log, writer) = DecisionLog::open(path.to_str().unwrap()).unwrap();
    log.submit(record(0));
    answered(log.flush());
    // Torn again before a reopen (another writer's crash): the same.
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    std::io::Write::write_all(&mut file, torn.as_bytes()).unwrap();
    answered(log.reopen()).unwrap();
    log.submit(record(1));
    let report = writer.shutdown(BOUND);
    assert_eq!(report.written, 2);
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5, "{text}");
    assert_eq!((lines[1], lines[3]), (torn, torn));
    let whole = [lines[0], lines[2], lines[4]].join("\n");
    assert_eq!(call_ids(&whole), ids([9999, 0, 1]));
}

#[test]
fn flush_answers_once_earlier_records_are_written() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("decisions.jsonl");
    // A flush interval longer than the test bound: only the request writes.
    let (log, writer) =
        DecisionLog::open_with(path.to_str().unwrap(), 64, Duration::from_secs(3600)).unwrap();
    for n in 0..10 {
        log.submit(record(n));
    }
    answered(log.flush());
    assert_eq!(
        call_ids(&std::fs::read_to_string(&path).unwrap()),
        ids(0..10)
    );
    assert_eq!(log.written(), 10);
    writer.shutdown(BOUND);
}

#[test]
fn an_unopenable_path_fails_open_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing-dir").join("decisions.jsonl");
    let err = DecisionLog::open(path.to_str().unwrap()).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("missing-dir/decisions.jsonl"), "{text}");
    assert!(text.contains("No such file or directory"), "{text}");
}

#[test]
fn reopen_after_rename_writes_a_new_file_at_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("decisions.jsonl");
    let rotated = dir.path().join("decisions.jsonl.1");
    let (log, writer) = DecisionLog::open(path.to_str().unwrap()).unwrap();
    for n in 0..10 {
        log.submit(record(n));
    }
    // logrotate: move the file away, then SIGHUP. Records still queued
    // when the file is moved go to the moved file.
    std::fs::rename(&path, &rotated).unwrap();
    answered(log.reopen()).unwrap();
    for n in 10..17 {
        log.submit(record(n));
    }
    let report = writer.shutdown(BOUND);
    assert_eq!((report.written, report.lost, report.dropped), (17, 0, 0));
    assert_eq!(
        call_ids(&std::fs::read_to_string(&rotated).unwrap()),
        ids(0..10)
    );
    assert_eq!(
        call_ids(&std::fs::read_to_string(&path).unwrap()),
        ids(10..17)
    );
}

#[test]
fn a_failed_reopen_keeps_writing_to_the_old_file() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("logs");
    std::fs::create_dir(&sub).unwrap();
    let path = sub.join("decisions.jsonl");
    let (log, writer) = DecisionLog::open(path.to_str().unwrap()).unwrap();
    log.submit(record(0));
    let moved = dir.path().join("moved");
    std::fs::rename(&sub, &moved).unwrap();
    let err = answered(log.reopen()).unwrap_err();
    assert!(err.to_string().contains("logs/decisions.jsonl"), "{err}");
    log.submit(record(1));
    assert_eq!(writer.shutdown(BOUND).written, 2);
    let text = std::fs::read_to_string(moved.join("decisions.jsonl")).unwrap();
    assert_eq!(call_ids(&text), ids(0..2));
}

/// A FIFO nobody opens for reading: opening it blocks, so the writer opens
/// it; submit keeps returning, drops are counted, shutdown gives up.
#[cfg(unix)]
#[test]
fn a_fifo_without_reader_neither_blocks_open_nor_submit() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("decisions.fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo (coreutils)");
    assert!(made.success());
    const CAPACITY: usize = 16;
    let (log, writer) =
        DecisionLog::open_with(fifo.to_str().unwrap(), CAPACITY, FLUSH_INTERVAL).unwrap();
    // Submitting from another thread, so a blocking submit fails the test
    // instead of hanging it.
    let (done_tx, done) = mpsc::channel();
    let submitter = log.clone();
    std::thread::spawn(move || {
        for n in 0..CAPACITY + 100 {
            submitter.submit(record(n));
        }
        done_tx.send(()).unwrap();
    });
    done.recv_timeout(BOUND)
        .expect("submit returned every time");
    assert_eq!(log.dropped(), 100);
    // The first drop was warned about at once; the other 99 once the
    // interval has passed, though no drop follows (the burst is over).
    let now = std::time::Instant::now();
    assert_eq!(log.warn_of_drops(now), None, "within the interval");
    assert_eq!(log.warn_of_drops(now + WARNING_INTERVAL), Some(99));
    assert_eq!(
        log.warn_of_drops(now + 3 * WARNING_INTERVAL),
        None,
        "none since"
    );
    let report = writer.shutdown(Duration::from_millis(50));
    assert!(!report.finished);
    assert_eq!(report.written, 0);
    assert_eq!(report.unwritten, CAPACITY as u64);
    assert_eq!(report.dropped, 100);
    // A reader at last: the writer left behind writes what it held, then ends.
    let (read_tx, read) = mpsc::channel();
    std::thread::spawn(move || {
        let text = std::fs::read_to_string(&fifo).unwrap();
        read_tx.send(text).unwrap();
    });
    let text = read.recv_timeout(BOUND).expect("the writer ended");
    assert_eq!(call_ids(&text), ids(0..CAPACITY));
}

// === fault-injecting sinks ===

/// An in-memory "file" that takes at most `room` bytes, then fails like a
/// full disk; a sink either truncates like a regular file or, like a pipe,
/// cannot take anything back.
#[derive(Clone, Default)]
struct Disk {
    bytes: Arc<Mutex<Vec<u8>>>,
    room: Arc<AtomicUsize>,
}

struct FaultSink {
    disk: Disk,
    regular: bool,
}

impl Sink for FaultSink {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let mut data = self.disk.bytes.lock().unwrap();
        let room = self
            .disk
            .room
            .load(Ordering::SeqCst)
            .saturating_sub(data.len());
        if room == 0 {
            return Err(io::Error::from(io::ErrorKind::StorageFull));
        }
        let n = bytes.len().min(room);
        data.extend_from_slice(&bytes[..n]);
        Ok(n)
    }

    fn takes_many_lines(&self) -> bool {
        self.regular
    }

    fn cut_tail(&mut self, tail: u64) -> io::Result<bool> {
        if !self.regular {
            return Ok(false);
        }
        let mut data = self.disk.bytes.lock().unwrap();
        let len = data.len() - tail as usize;
        data.truncate(len);
        Ok(true)
    }
}

fn faulty(regular: bool, room: usize) -> (Disk, DecisionLog, LogWriter) {
    let disk = Disk::default();
    disk.room.store(room, Ordering::SeqCst);
    let sink = FaultSink {
        disk: disk.clone(),
        regular,
    };
    let (log, writer) = start(
        Target::Path("fault".into()),
        Some(Box::new(sink)),
        64,
        FLUSH_INTERVAL,
    )
    .unwrap();
    (disk, log, writer)
}

fn contents(disk: &Disk) -> String {
    String::from_utf8(disk.bytes.lock().unwrap().clone()).unwrap()
}

#[test]
fn a_full_disk_leaves_whole_lines_only_on_a_regular_file() {
    let len = line(0).len() + 1;
    // Room for two records and part of a third.
    let (disk, log, writer) = faulty(true, 2 * len + len / 2);
    for n in 0..5 {
        log.submit(record(n));
    }
    answered(log.flush());
    assert_eq!(call_ids(&contents(&disk)), ids(0..2), "torn line cut off");
    assert_eq!((log.written(), log.lost()), (2, 3));
    // Space again: the next records follow on lines of their own.
    disk.room.store(usize::MAX, Ordering::SeqCst);
    for n in 5..8 {
        log.submit(record(n));
    }
    let report = writer.shutdown(BOUND);
    assert_eq!((report.written, report.lost), (5, 3));
    assert_eq!(call_ids(&contents(&disk)), ids([0, 1, 5, 6, 7]));
}

#[test]
fn a_torn_line_on_a_pipe_is_never_continued_by_the_next_record() {
    let len = line(0).len() + 1;
    let (disk, log, writer) = faulty(false, 2 * len + 10);
    for n in 0..5 {
        log.submit(record(n));
    }
    answered(log.flush());
    assert_eq!((log.written(), log.lost()), (2, 3));
    disk.room.store(usize::MAX, Ordering::SeqCst);
    for n in 5..8 {
        log.submit(record(n));
    }
    let report = writer.shutdown(BOUND);
    assert_eq!((report.written, report.lost), (5, 3));
    let text = contents(&disk);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 6, "{text}");
    // The fragment of record 2 stands alone; every other line is a record.
    assert_eq!(lines[2], &line(2)[..10]);
    let mut whole = lines.clone();
    whole.remove(2);
    assert_eq!(call_ids(&whole.join("\n")), ids([0, 1, 5, 6, 7]));
}

/// A sink that takes `before_stall` writes, then blocks (a reader that has
/// stopped reading) until released.
struct StallingSink {
    writes: usize,
    before_stall: usize,
    stalled: mpsc::Sender<()>,
    release: mpsc::Receiver<()>,
}

impl Sink for StallingSink {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        if self.writes == self.before_stall {
            let _ = self.stalled.send(());
            let _ = self.release.recv();
        }
        self.writes += 1;
        Ok(bytes.len())
    }

    fn takes_many_lines(&self) -> bool {
        false
    }

    fn cut_tail(&mut self, _tail: u64) -> io::Result<bool> {
        Ok(false)
    }
}

/// A log of `capacity` records whose sink stalls after `before_stall`
/// writes: the log, its writer, the sink's signal that it stalled, and the
/// sender that releases it.
struct Stalling {
    log: DecisionLog,
    writer: LogWriter,
    stalled: mpsc::Receiver<()>,
    release: mpsc::Sender<()>,
}

fn stalling(capacity: usize, before_stall: usize) -> Stalling {
    let (stalled_tx, stalled) = mpsc::channel();
    let (release, release_rx) = mpsc::channel();
    let sink = StallingSink {
        writes: 0,
        before_stall,
        stalled: stalled_tx,
        release: release_rx,
    };
    let (log, writer) = start(
        Target::Stdout,
        Some(Box::new(sink)),
        capacity,
        FLUSH_INTERVAL,
    )
    .unwrap();
    Stalling {
        log,
        writer,
        stalled,
        release,
    }
}

#[test]
fn a_stalled_reader_stalls_only_the_writer_and_shutdown_gives_up() {
    const CAPACITY: usize = 8;
    let Stalling {
        log,
        writer,
        stalled,
        release,
    } = stalling(CAPACITY, 3);
    for n in 0..3 {
        log.submit(record(n));
    }
    answered(log.flush());
    // The fourth line blocks the writer.
    log.submit(record(3));
    stalled.recv_timeout(BOUND).expect("the writer stalled");
    for n in 4..4 + CAPACITY + 5 {
        log.submit(record(n));
    }
    assert_eq!(log.dropped(), 5);
    let report = writer.shutdown(Duration::from_millis(50));
    assert_eq!(
        report,
        ShutdownReport {
            written: 3,
            dropped: 5,
            lost: 0,
            unwritten: 1 + CAPACITY as u64,
            finished: false,
        }
    );
    // Let the thread left behind finish.
    release.send(()).unwrap();
}

#[test]
fn chunks_end_on_line_ends() {
    let lines = [(10, true), (20, true), (30, true)];
    assert_eq!(chunk_end(&lines, 25), 20);
    assert_eq!(chunk_end(&lines, 30), 30);
    assert_eq!(chunk_end(&lines, 5), 10, "a long first line goes alone");
    assert_eq!(chunk_end(&lines[1..], 100), 30);
}

#[test]
fn drops_and_protocol_answers_leave_the_last_quarter_of_the_queue_to_the_others() {
    const CAPACITY: usize = 8;
    let Stalling {
        log,
        writer,
        stalled,
        release,
    } = stalling(CAPACITY, 0);
    log.submit(record(0));
    stalled.recv_timeout(BOUND).expect("the writer stalled");
    let scanner = |n| DecisionRecord {
        action: Action::Drop,
        rule: Cow::Borrowed("scanner"),
        ..record(n)
    };
    let over_its_rate = |n| DecisionRecord {
        kind: Some(DecisionKind::Protocol),
        action: Action::Reject,
        rule: Cow::Borrowed("rate_limit.requests"),
        status: Some(503),
        ..record(n)
    };
    for n in 1..=4 {
        log.submit(scanner(n));
    }
    // Three quarters of the queue (6) hold the first two of these.
    for n in 5..=8 {
        log.submit(over_its_rate(n));
    }
    assert_eq!(log.dropped(), 2);
    // The last quarter is there for the legitimate clients' records: a
    // relayed message's, and sipadmit's own answer to one (a 503 for the
    // registrar unavailable).
    log.submit(DecisionRecord {
        kind: Some(DecisionKind::Protocol),
        action: Action::Reject,
        rule: Cow::Borrowed("proxy.upstream-unavailable"),
        status: Some(503),
        ..record(9)
    });
    for n in 10..=11 {
        log.submit(record(n));
    }
    assert_eq!(log.dropped(), 3);
    release.send(()).unwrap();
    let report = writer.shutdown(BOUND);
    assert_eq!(
        report,
        ShutdownReport {
            written: 1 + 6 + 2,
            dropped: 3,
            lost: 0,
            unwritten: 0,
            finished: true,
        }
    );
}

#[test]
fn records_lost_on_a_full_disk_are_told_again_once_writing_resumes() {
    let len = line(0).len() + 1;
    let disk = Disk::default();
    disk.room.store(2 * len, Ordering::SeqCst);
    let shared = Shared::new(Target::Path("fault".into()), 64, FLUSH_INTERVAL);
    let sink = FaultSink {
        disk: disk.clone(),
        regular: true,
    };
    let mut writer = Writer::new(shared.clone(), Some(Box::new(sink)));
    let write = |writer: &mut Writer, records: std::ops::Range<usize>| {
        writer.batch.extend(records.map(record));
        crate::captured_log::captured_log(tracing::Level::WARN, || writer.write_batch()).1
    };
    // The disk fills: 3 of 5 lost, told at once with the cause.
    let first = write(&mut writer, 0..5);
    assert!(first.contains("lost=3 lost_total=3"), "{first}");
    assert!(first.contains("cause="), "{first}");
    assert!(!first.contains("not open"), "{first}");
    // Within the interval, 2 more are lost and held back.
    assert_eq!(write(&mut writer, 5..7), "");
    // Room again, the interval over: the next write tells the 2 held back,
    // not only a stop long after.
    disk.room.store(usize::MAX, Ordering::SeqCst);
    writer.last_lost_warning = Some(Instant::now() - WARNING_INTERVAL);
    let resumed = write(&mut writer, 7..9);
    assert!(resumed.contains("lost=2 lost_total=5"), "{resumed}");
    assert_eq!(call_ids(&contents(&disk)), ids([0, 1, 7, 8]));
    // Nothing lost since: nothing more to tell.
    writer.last_lost_warning = Some(Instant::now() - WARNING_INTERVAL);
    assert_eq!(write(&mut writer, 9..10), "");
}

#[test]
fn records_lost_and_held_back_are_told_when_due_though_nothing_more_comes() {
    let disk = Disk::default();
    let shared = Shared::new(Target::Path("fault".into()), 64, FLUSH_INTERVAL);
    let sink = FaultSink {
        disk: disk.clone(),
        regular: true,
    };
    let mut writer = Writer::new(shared.clone(), Some(Box::new(sink)));
    // Told once, then 4 more lost within the interval: held back.
    writer.batch.extend((0..2).map(record));
    writer.write_batch();
    writer.batch.extend((2..6).map(record));
    let held = crate::captured_log::captured_log(tracing::Level::WARN, || writer.write_batch()).1;
    assert_eq!(held, "");
    // Due in 100 ms; nothing more is submitted.
    writer.last_lost_warning = Some(Instant::now() - WARNING_INTERVAL + Duration::from_millis(100));
    let (told_tx, told) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let text =
            crate::captured_log::captured_log(tracing::Level::WARN, || assert!(writer.turn())).1;
        let _ = told_tx.send(text);
    });
    let text = told.recv_timeout(BOUND).expect("told while idle");
    assert!(text.contains("lost=4 lost_total=6"), "{text}");
}
