//! Reading decision logs: files, gzip files (logrotate's `compress`;
//! recognised by their content, whatever their name, concatenated members
//! included) and stdin, line by line into a [`Tally`], without keeping
//! more than one line (at most [`MAX_LINE_BYTES`]) beyond the read buffer.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use flate2::bufread::MultiGzDecoder;

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

/// A gzip log that could be read only up to a damage (a file cut short, a
/// corrupt block): what came before it is counted, the rest is skipped.
#[derive(Debug, thiserror::Error)]
#[error("{name}: damaged gzip stream ({source}): counted up to the damage, the rest skipped")]
pub struct Damaged {
    /// The path, or `stdin`.
    pub name: String,
    /// What the decompressor said.
    pub source: io::Error,
}

/// Read `log` to its end into `tally`; a gzip stream is decompressed. A
/// damaged gzip stream is read up to the damage (as `zcat` does), so one
/// bad file among rotated logs does not stop the report.
pub fn read_log(log: OpenLog, tally: &mut Tally<'_>) -> Result<Option<Damaged>, ReportError> {
    let name = log.name;
    let error = |source| ReportError::Read {
        name: name.clone(),
        source,
    };
    let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, log.source);
    let gzip = loop {
        match reader.fill_buf() {
            Ok(head) => break head.starts_with(&GZIP_MAGIC),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(error(e)),
        }
    };
    if !gzip {
        return read_lines(reader, tally).map(|()| None).map_err(error);
    }
    let decoder = MultiGzDecoder::new(reader);
    match read_lines(BufReader::with_capacity(READ_BUFFER_BYTES, decoder), tally) {
        Ok(()) => Ok(None),
        // What the decompressor reports (the file's own read errors keep
        // their kinds and stay fatal).
        Err(source)
            if matches!(
                source.kind(),
                io::ErrorKind::InvalidInput
                    | io::ErrorKind::InvalidData
                    | io::ErrorKind::UnexpectedEof
            ) =>
        {
            Ok(Some(Damaged { name, source }))
        }
        Err(e) => Err(error(e)),
    }
}

/// Feed every line of `reader` to `tally`. Lines are handed over straight
/// from the read buffer; only a line split across two reads is copied.
pub fn read_lines(mut reader: impl BufRead, tally: &mut Tally<'_>) -> io::Result<()> {
    let mut carry: Vec<u8> = Vec::new();
    let mut oversized = false;
    loop {
        let buf = match reader.fill_buf() {
            Ok(buf) => buf,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // The line read so far is cut: not a record.
                if oversized || !carry.is_empty() {
                    tally.add_malformed();
                }
                return Err(e);
            }
        };
        if buf.is_empty() {
            if oversized {
                tally.add_malformed();
            } else if !carry.is_empty() {
                tally.add_line(&carry);
            }
            return Ok(());
        }
        let mut start = 0;
        while let Some(at) = memchr::memchr(b'\n', &buf[start..]) {
            let line = &buf[start..start + at];
            if oversized {
                tally.add_malformed();
                oversized = false;
            } else if carry.is_empty() {
                tally.add_line(line);
            } else if carry.len() + line.len() > MAX_LINE_BYTES {
                tally.add_malformed();
                carry.clear();
            } else {
                carry.extend_from_slice(line);
                tally.add_line(&carry);
                carry.clear();
            }
            start += at + 1;
        }
        let rest = &buf[start..];
        if !oversized {
            if carry.len() + rest.len() > MAX_LINE_BYTES {
                oversized = true;
                carry = Vec::new();
            } else {
                carry.extend_from_slice(rest);
            }
        }
        let used = buf.len();
        reader.consume(used);
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

    #[test]
    fn gzip_is_recognised_by_content() {
        use flate2::write::GzEncoder;
        use std::io::Write;
        let mut gz = Vec::new();
        for part in [format!("{RECORD}\n{RECORD}\n"), format!("{RECORD}\n")] {
            // Two gzip members, as `cat a.gz b.gz` makes.
            let mut e = GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(part.as_bytes()).unwrap();
            gz.extend(e.finish().unwrap());
        }
        let catalog = Catalog::from_toml_str(SHIPPED_CATALOG).unwrap();
        let mut tally = Tally::new(&catalog, TimeRange::default());
        let log = OpenLog {
            name: "test.gz".into(),
            source: Box::new(io::Cursor::new(gz)),
        };
        read_log(log, &mut tally).unwrap();
        let s = tally.finish();
        assert_eq!((s.records, s.malformed_lines), (3, 0));
    }

    #[test]
    fn a_damaged_gzip_stream_is_counted_up_to_the_damage_and_named() {
        use flate2::write::GzEncoder;
        use std::io::Write;
        let catalog = Catalog::from_toml_str(SHIPPED_CATALOG).unwrap();
        let read_damaged = |bytes: Vec<u8>| {
            let mut tally = Tally::new(&catalog, TimeRange::default());
            let log = OpenLog {
                name: "broken.gz".into(),
                source: Box::new(io::Cursor::new(bytes)),
            };
            let damage = read_log(log, &mut tally).unwrap().expect("damaged");
            let s = tally.finish();
            (s.records, s.malformed_lines, damage.to_string())
        };
        // A corrupt block right after the header.
        let (records, malformed, message) =
            read_damaged(vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 0xff]);
        assert_eq!((records, malformed), (0, 0));
        assert!(
            message.starts_with("broken.gz: damaged gzip stream ("),
            "{message}"
        );
        // A file cut short (`head -c`): the records before the cut count,
        // the line it cut is malformed.
        let mut e = GzEncoder::new(Vec::new(), flate2::Compression::none());
        for _ in 0..200 {
            e.write_all(format!("{RECORD}\n").as_bytes()).unwrap();
        }
        let whole = e.finish().unwrap();
        let (records, malformed, _) = read_damaged(whole[..whole.len() / 2].to_vec());
        assert!((90..110).contains(&records), "{records}");
        assert_eq!(malformed, 1);
    }
}
