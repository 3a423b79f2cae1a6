//! Reading decision logs: files, gzip files (logrotate's `compress`;
//! recognised by their content, whatever their name, concatenated members
//! included) and stdin, line by line into a [`Tally`], without keeping
//! more than one line (at most [`MAX_LINE_BYTES`]) beyond the read buffer.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use flate2::bufread::GzDecoder;

use super::summary::DamagedLog;
use super::tally::Tally;
use super::ReportError;

/// The longest line read as a possible record: 4 MiB (a record holds a few
/// header values of a message of at most 1 MiB). Longer lines are counted
/// as malformed and skipped without being held in memory.
pub const MAX_LINE_BYTES: usize = 4 << 20;
/// Read buffer size: 256 KiB.
const READ_BUFFER_BYTES: usize = 256 * 1024;
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// One log to read, opened.
pub struct OpenLog {
    /// How errors name it: the path, or `stdin`.
    name: String,
    source: Box<dyn Read>,
}

impl std::fmt::Debug for OpenLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenLog")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl OpenLog {
    /// How errors name this log.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// `paths` with each file once (`-` once), in their order, and the names
/// given again (the same file by another spelling, `./decisions.log`, or
/// a shell glob that lists it twice): read twice, every record would count
/// twice. A path that cannot be resolved is kept, for its open to say why.
pub fn distinct_logs(paths: &[PathBuf]) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let mut seen = std::collections::HashSet::new();
    let (mut distinct, mut repeated) = (Vec::new(), Vec::new());
    for path in paths {
        let key = match path.as_os_str() == "-" {
            true => Some(path.clone()),
            false => std::fs::canonicalize(path).ok(),
        };
        if key.is_some_and(|key| !seen.insert(key)) {
            repeated.push(path.clone());
        } else {
            distinct.push(path.clone());
        }
    }
    (distinct, repeated)
}

/// Open every log named (`-` is stdin; none at all is stdin), so that a
/// missing file is reported before anything is read.
pub fn open_logs(paths: &[PathBuf]) -> Result<Vec<OpenLog>, ReportError> {
    if paths.is_empty() {
        return Ok(vec![stdin()]);
    }
    paths
        .iter()
        .map(|path| {
            if path.as_os_str() == "-" {
                return Ok(stdin());
            }
            open_file(path)
        })
        .collect()
}

fn stdin() -> OpenLog {
    OpenLog {
        name: "stdin".to_owned(),
        source: Box::new(io::stdin()),
    }
}

fn open_file(path: &Path) -> Result<OpenLog, ReportError> {
    let file = File::open(path).map_err(|source| ReportError::Open {
        path: path.to_owned(),
        source,
    })?;
    if file.metadata().is_ok_and(|m| m.is_dir()) {
        return Err(ReportError::Open {
            path: path.to_owned(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "is a directory"),
        });
    }
    Ok(OpenLog {
        name: path.display().to_string(),
        source: Box::new(file),
    })
}

/// A gzip log read only up to a damage (a file cut short, a corrupt block,
/// a checksum that does not match). gzip checks a member's CRC only at the
/// member's end, so a flipped bit inside the compressed data can decode
/// into altered lines that are read, and counted, before the damage shows:
/// the lines of the damaged member read before then were counted and may
/// be altered; the rest of the file is skipped.
#[derive(Debug, thiserror::Error)]
#[error(
    "{name}: damaged gzip stream ({source}): {lines_counted} lines of its gzip member {member} \
     were read before the damage was detected; they were counted and may be altered \
     (gzip checks a member's checksum only at its end); the rest of the file was skipped"
)]
pub struct Damaged {
    /// The path, or `stdin`.
    pub name: String,
    /// What the decompressor said.
    pub source: io::Error,
    /// The gzip member the damage is in, from 1 (a logrotate file has
    /// one; `cat a.gz b.gz` makes two); the members before it were intact.
    pub member: u64,
    /// Lines of that member read before the damage was detected, and
    /// counted (as records, records outside the time range, or malformed
    /// lines; the line the damage cut is a malformed one).
    pub lines_counted: u64,
}

impl Damaged {
    /// What the report shows of it.
    pub fn to_summary(&self) -> DamagedLog {
        DamagedLog {
            log: self.name.clone(),
            error: self.source.to_string(),
            gzip_member: self.member,
            lines_counted: self.lines_counted,
        }
    }
}

/// Read `log` to its end into `tally`; a gzip stream is decompressed. A
/// damaged gzip stream is read up to the damage (as `zcat` does), so one
/// bad file among rotated logs does not stop the report: the damage is
/// added to `tally` (the report shows it) and returned (for a warning).
pub fn read_log(log: OpenLog, tally: &mut Tally<'_>) -> Result<Option<Damaged>, ReportError> {
    let name = log.name;
    tally.begin_log(&name);
    let error = |source| ReportError::Read {
        name: name.clone(),
        source,
    };
    let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, log.source);
    let gzip = peek(&mut reader, |head| head.starts_with(&GZIP_MAGIC)).map_err(error)?;
    if !gzip {
        return read_lines(reader, tally).map(|()| None).map_err(error);
    }
    let damaged = read_gzip(reader, tally, &name).map_err(error)?;
    if let Some(d) = &damaged {
        tally.add_damaged(d.to_summary());
    }
    Ok(damaged)
}

/// What `look` makes of the bytes `reader` has ahead (none: its end),
/// read again when interrupted.
fn peek<T>(reader: &mut impl BufRead, look: impl FnOnce(&[u8]) -> T) -> io::Result<T> {
    loop {
        match reader.fill_buf() {
            Ok(ahead) => return Ok(look(ahead)),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Whether a decompressor's error is damage in the stream (the file's own
/// read errors keep their kinds and stay fatal).
fn is_damage(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::InvalidInput | io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof
    )
}

/// Feed the lines of every gzip member of `reader` (the log `name`) to
/// `tally`, member by member (a line may run on from one member into the
/// next), up to the end or a damage.
fn read_gzip(
    mut reader: impl BufRead,
    tally: &mut Tally<'_>,
    name: &str,
) -> io::Result<Option<Damaged>> {
    let mut lines = Lines::default();
    let mut buf = vec![0; READ_BUFFER_BYTES];
    let mut member = 0;
    loop {
        member += 1;
        let before = tally.lines();
        let mut decoder = GzDecoder::new(reader);
        loop {
            match decoder.read(&mut buf) {
                // The member's end: its CRC and length matched.
                Ok(0) => break,
                Ok(n) => lines.feed(&buf[..n], tally),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) if is_damage(&source) => {
                    lines.cut(tally);
                    return Ok(Some(Damaged {
                        name: name.to_owned(),
                        source,
                        member,
                        lines_counted: tally.lines() - before,
                    }));
                }
                Err(e) => return Err(e),
            }
        }
        reader = decoder.into_inner();
        if peek(&mut reader, <[u8]>::is_empty)? {
            lines.finish(tally);
            return Ok(None);
        }
    }
}

/// Feed every line of `reader` to `tally`. Lines are handed over straight
/// from the read buffer; only a line split across two reads is copied.
pub fn read_lines(mut reader: impl BufRead, tally: &mut Tally<'_>) -> io::Result<()> {
    let mut lines = Lines::default();
    loop {
        let buf = match reader.fill_buf() {
            Ok(buf) => buf,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                lines.cut(tally);
                return Err(e);
            }
        };
        if buf.is_empty() {
            lines.finish(tally);
            return Ok(());
        }
        lines.feed(buf, tally);
        let used = buf.len();
        reader.consume(used);
    }
}

/// A stream cut into lines chunk by chunk: the start of a line a chunk
/// leaves unfinished is kept (at most [`MAX_LINE_BYTES`]) for the next.
#[derive(Debug, Default)]
struct Lines {
    carry: Vec<u8>,
    /// The unfinished line is longer than [`MAX_LINE_BYTES`] (not kept).
    oversized: bool,
}

impl Lines {
    /// Count the lines that end in `buf`, and keep the start of the next.
    fn feed(&mut self, buf: &[u8], tally: &mut Tally<'_>) {
        let mut start = 0;
        while let Some(at) = memchr::memchr(b'\n', &buf[start..]) {
            let line = &buf[start..start + at];
            if self.oversized {
                tally.add_malformed();
                self.oversized = false;
            } else if self.carry.is_empty() {
                tally.add_line(line);
            } else if self.carry.len() + line.len() > MAX_LINE_BYTES {
                tally.add_malformed();
                self.carry.clear();
            } else {
                self.carry.extend_from_slice(line);
                tally.add_line(&self.carry);
                self.carry.clear();
            }
            start += at + 1;
        }
        let rest = &buf[start..];
        if !self.oversized {
            if self.carry.len() + rest.len() > MAX_LINE_BYTES {
                self.oversized = true;
                self.carry = Vec::new();
            } else {
                self.carry.extend_from_slice(rest);
            }
        }
    }

    /// The stream ended: count its last line, if it has no line break.
    fn finish(self, tally: &mut Tally<'_>) {
        if self.oversized {
            tally.add_malformed();
        } else if !self.carry.is_empty() {
            tally.add_line(&self.carry);
        }
    }

    /// The stream broke: the line read so far is cut, not a record.
    fn cut(self, tally: &mut Tally<'_>) {
        if self.oversized || !self.carry.is_empty() {
            tally.add_malformed();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::Catalog;
    use crate::config::SHIPPED_CATALOG;
    use crate::report::TimeRange;

    const RECORD: &str = r#"{"ts":"2026-11-27T00:57:40.653Z","transport":"udp","source":"127.0.0.1:5062","method":"REGISTER","call_id":"c1","from":"sip:alice@contoso.com","to":"sip:alice@contoso.com","request_uri":"sip:contoso.com","user_agent":"UCCAPI/15.0.4481.1000 OC/15.0.4481.1000 (Microsoft Lync)","client":"lync-2013","category":"desktop","support":"supported","role":"none","action":"allow","rule":"supported","client_rule":"lync-2013#1","status":null,"mode":"enforce","would_reject":false,"generation":1}"#;

    /// (records, malformed) after reading `text` through a reader that
    /// hands out `chunk` bytes at a time.
    fn read(text: &[u8], chunk: usize) -> (u64, u64) {
        let catalog = Catalog::from_toml_str(SHIPPED_CATALOG).unwrap();
        let mut tally = Tally::new(&catalog, TimeRange::default());
        let reader = BufReader::with_capacity(chunk, text);
        read_lines(reader, &mut tally).unwrap();
        let s = tally.finish();
        (s.records, s.malformed_lines)
    }

    #[test]
    fn a_log_named_twice_is_read_once() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("decisions.log");
        std::fs::write(&log, "").unwrap();
        let again = dir.path().join(".").join("decisions.log");
        let missing = dir.path().join("missing.log");
        let paths = [
            log.clone(),
            "-".into(),
            again.clone(),
            "-".into(),
            missing.clone(),
            missing.clone(),
        ];
        let (distinct, repeated) = distinct_logs(&paths);
        assert_eq!(distinct, [log, "-".into(), missing.clone(), missing]);
        assert_eq!(repeated, [again, PathBuf::from("-")]);
    }

    #[test]
    fn lines_split_across_reads_are_joined() {
        let text = format!("{RECORD}\n{RECORD}\nnot a record\n{RECORD}");
        for chunk in [1, 7, 64, 500, 4096] {
            assert_eq!(read(text.as_bytes(), chunk), (3, 1), "chunk {chunk}");
        }
    }

    #[test]
    fn blank_lines_and_crlf() {
        let text = format!("{RECORD}\r\n\n{RECORD}\n");
        assert_eq!(read(text.as_bytes(), 64), (2, 1));
    }

    #[test]
    fn an_oversized_line_is_one_malformed_line_and_is_not_kept() {
        let huge = "x".repeat(MAX_LINE_BYTES + 10);
        for (text, records) in [
            (format!("{RECORD}\n{huge}\n{RECORD}\n"), 2),
            (format!("{RECORD}\n{huge}"), 1),
            (format!("{huge}\n{RECORD}"), 1),
        ] {
            assert_eq!(read(text.as_bytes(), 8192), (records, 1));
        }
    }

    fn gzip(text: &str) -> Vec<u8> {
        gzip_at(text, flate2::Compression::default())
    }

    /// `text` as a gzip member compressed at `level` (`none`: cutting it
    /// in half leaves about half its lines).
    fn gzip_at(text: &str, level: flate2::Compression) -> Vec<u8> {
        use flate2::write::GzEncoder;
        use std::io::Write;
        let mut e = GzEncoder::new(Vec::new(), level);
        e.write_all(text.as_bytes()).unwrap();
        e.finish().unwrap()
    }

    /// The summary after reading `bytes` as a log named `name`, and the
    /// damage reported.
    fn read_gz(bytes: Vec<u8>) -> (crate::report::Summary, Option<Damaged>) {
        let catalog = Catalog::from_toml_str(SHIPPED_CATALOG).unwrap();
        let mut tally = Tally::new(&catalog, TimeRange::default());
        let log = OpenLog {
            name: "broken.gz".into(),
            source: Box::new(io::Cursor::new(bytes)),
        };
        let damage = read_log(log, &mut tally).unwrap();
        (tally.finish(), damage)
    }

    #[test]
    fn gzip_is_recognised_by_content() {
        // Two gzip members, as `cat a.gz b.gz` makes; the second line runs
        // on from the first member into the second.
        let (first, second) = RECORD.split_at(100);
        let mut gz = gzip(&format!("{RECORD}\n{first}"));
        gz.extend(gzip(&format!("{second}\n{RECORD}\n")));
        let (s, damage) = read_gz(gz);
        assert!(damage.is_none());
        assert_eq!((s.records, s.malformed_lines), (3, 0));
        assert!(s.damaged_logs.is_empty());
    }

    #[test]
    fn a_damaged_gzip_stream_is_counted_up_to_the_damage_and_named() {
        // A corrupt block right after the header.
        let (s, damage) = read_gz(vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 0xff]);
        let damage = damage.expect("damaged");
        assert_eq!((s.records, s.malformed_lines), (0, 0));
        assert_eq!((damage.member, damage.lines_counted), (1, 0));
        let message = damage.to_string();
        assert!(
            message.starts_with("broken.gz: damaged gzip stream ("),
            "{message}"
        );
        // A file cut short (`head -c`): the records before the cut count,
        // the line it cut is malformed.
        let whole = gzip_at(
            &format!("{RECORD}\n").repeat(200),
            flate2::Compression::none(),
        );
        let (s, damage) = read_gz(whole[..whole.len() / 2].to_vec());
        let damage = damage.expect("damaged");
        assert!((90..110).contains(&s.records), "{}", s.records);
        assert_eq!(s.malformed_lines, 1);
        assert_eq!(damage.lines_counted, s.records + 1);
        assert_eq!(s.damaged_logs, [damage.to_summary()]);
    }

    /// Trial 25: a flipped bit inside the compressed data decodes into
    /// altered lines, which are counted before the CRC at the member's end
    /// tells; the warning and the report say so, with how many.
    #[test]
    fn a_flipped_bit_is_found_at_the_end_of_its_member_and_its_lines_are_said_counted() {
        let original = format!("{RECORD}\n").repeat(200);
        let whole = gzip(&original);
        // A bit whose flip still decodes to the end, into other bytes.
        let flipped = (whole.len() / 2..whole.len() - 8)
            .map(|at| {
                let mut bytes = whole.clone();
                bytes[at] ^= 0x02;
                bytes
            })
            .find(|bytes| {
                let mut out = Vec::new();
                let result = GzDecoder::new(&bytes[..]).read_to_end(&mut out);
                result.is_err()
                    && out.len() == original.len()
                    && out != original.as_bytes()
                    && memchr::memchr_iter(b'\n', &out).count() == 200
            })
            .expect("a flip the CRC alone catches");
        let (s, damage) = read_gz(flipped);
        let damage = damage.expect("damaged");
        assert_eq!((damage.member, damage.lines_counted), (1, 200));
        assert_eq!(s.records_read + s.malformed_lines, 200);
        let message = damage.to_string();
        assert!(
            message.contains(
                "200 lines of its gzip member 1 were read before the damage was detected; they were counted and may be altered"
            ),
            "{message}"
        );
        assert!(!message.contains("counted up to the damage"), "{message}");
        assert_eq!(s.damaged_logs, [damage.to_summary()]);
    }

    /// Damage in a second member: the first, whose CRC matched, is intact;
    /// only the lines of the second are said to be doubtful.
    #[test]
    fn damage_in_a_later_member_names_it_and_counts_only_its_lines() {
        let mut gz = gzip(&format!("{RECORD}\n").repeat(100));
        let second = gzip_at(
            &format!("{RECORD}\n").repeat(200),
            flate2::Compression::none(),
        );
        gz.extend(&second[..second.len() / 2]);
        let (s, damage) = read_gz(gz);
        let damage = damage.expect("damaged");
        assert_eq!(damage.member, 2);
        assert_eq!(damage.lines_counted, s.records + s.malformed_lines - 100);
        assert!((40..160).contains(&damage.lines_counted), "{damage}");
    }
}
