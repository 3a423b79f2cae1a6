//! The RFC 4475 and RFC 5118 torture messages through the message view:
//! valid messages give a view, refused ones give the error the proxy
//! answers with, and nothing panics.

use std::path::PathBuf;

use bytes::Bytes;
use sipadmit::sip::{SipError, SipView};

fn corpus_dir(set: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(set)
}

fn view(bytes: Vec<u8>) -> Result<SipView, SipError> {
    let v = SipView::parse(Bytes::from(bytes))?;
    v.check()?;
    Ok(v)
}

#[test]
fn rfc4475_manifest_holds_in_the_view() {
    let dir = corpus_dir("rfc4475");
    let manifest = std::fs::read_to_string(dir.join("MANIFEST.tsv"))
        .expect("tests/corpus/rfc4475/MANIFEST.tsv must exist");
    let mut rows = 0;
    for line in manifest
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let cols: Vec<&str> = line.split('\t').collect();
        let (file, kind, level, expected) = (cols[0], cols[2], cols[3], cols[4]);
        let bytes = std::fs::read(dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        let result = view(bytes);
        rows += 1;
        match kind {
            "valid" | "valid-response" => {
                if let Err(e) = &result {
                    panic!("{file}: valid message refused: {e}");
                }
            }
            "invalid-response" => assert!(result.is_err(), "{file}: invalid response accepted"),
            "invalid" if level != "either" => {
                let want: Vec<u16> = expected
                    .split('|')
                    .filter_map(|alt| alt.strip_prefix("reply:")?.parse().ok())
                    .collect();
                match &result {
                    Ok(_) => panic!("{file}: invalid message accepted, expected {expected}"),
                    Err(e) => assert!(
                        want.contains(&e.status_code()),
                        "{file}: refused with {} ({e}), expected {expected}",
                        e.status_code()
                    ),
                }
            }
            _ => {} // `either` rows: any outcome but a panic.
        }
    }
    assert_eq!(rows, 49, "every RFC 4475 message is covered");
}

#[test]
fn dblreq_yields_only_the_first_request() {
    let bytes = std::fs::read(corpus_dir("rfc4475").join("dblreq.dat")).unwrap();
    let v = view(bytes.clone()).unwrap();
    assert!(v.raw().len() < bytes.len());
    assert!(v.raw().ends_with(b"\r\n\r\n"));
    assert_eq!(v.body(), b"");
}

#[test]
fn rfc5118_ipv6_messages() {
    let dir = corpus_dir("rfc5118");
    let mut files = 0;
    for entry in std::fs::read_dir(&dir).expect("tests/corpus/rfc5118") {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let result = view(std::fs::read(&path).unwrap());
        files += 1;
        if name == "ipv6-bad.dat" || name == "ipv6-bug-abnf-3-colons.dat" {
            assert_eq!(result.unwrap_err(), SipError::MalformedRequestUri, "{name}");
        } else if let Err(e) = result {
            panic!("{name}: valid IPv6 message refused: {e}");
        }
    }
    assert_eq!(files, 12);
}
