//! The flow secrets: `proxy.flow_secret` (one secret, in the config) or
//! `proxy.flow_secret_file` (one secret per line; the first signs, every
//! line verifies). The file is read at start and at every reload
//! (`SIGHUP`), so a pool's secret can be rotated without a restart; a file
//! that cannot be read, that every user may read, or that holds a secret
//! shorter than [`MIN_SECRET_BYTES`] is refused (at start: no start; at a
//! reload: the running configuration is kept), each problem naming the
//! file and the line.
//!
//! [`parse`] is the pure part (bytes in, secrets or problems out); [`read`]
//! adds the file system's checks.

use std::fmt;
use std::path::{Path, PathBuf};

/// Shortest secret accepted, bytes.
pub const MIN_SECRET_BYTES: usize = 16;
/// Most secrets one file may hold: each one after the first is an HMAC
/// more for every token that fails the first (all of them, for a forged
/// token). A rotation needs two.
pub const MAX_SECRETS: usize = 8;
/// Largest secret file read, bytes (a bigger one is not a secret file).
pub const MAX_FILE_BYTES: u64 = 65_536;

/// Where the secrets came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// `proxy.flow_secret`.
    Inline,
    /// `proxy.flow_secret_file`, as resolved (relative to the config file's
    /// directory).
    File(PathBuf),
}

/// The validated flow secrets: at least one, each at least
/// [`MIN_SECRET_BYTES`] long, at most [`MAX_SECRETS`]. Their `Debug` shows
/// how many there are and where they came from, never the secrets.
#[derive(Clone, PartialEq, Eq)]
pub struct FlowSecrets {
    /// Where they came from.
    pub source: SecretSource,
    /// The secrets in order: the first signs.
    secrets: Vec<Vec<u8>>,
}

impl fmt::Debug for FlowSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FlowSecrets")
            .field("source", &self.source)
            .field("secrets", &self.secrets.len())
            .finish()
    }
}

impl FlowSecrets {
    /// `proxy.flow_secret`, checked: at least [`MIN_SECRET_BYTES`] bytes.
    pub fn inline(secret: &str) -> Result<Self, String> {
        if secret.len() < MIN_SECRET_BYTES {
            return Err(format!(
                "{} characters; at least {MIN_SECRET_BYTES} are needed",
                secret.len()
            ));
        }
        Ok(Self {
            source: SecretSource::Inline,
            secrets: vec![secret.as_bytes().to_vec()],
        })
    }

    /// The secrets, the signing one first.
    pub fn secrets(&self) -> &[Vec<u8>] {
        &self.secrets
    }

    /// The config key they came from.
    pub fn key(&self) -> &'static str {
        match self.source {
            SecretSource::Inline => "proxy.flow_secret",
            SecretSource::File(_) => "proxy.flow_secret_file",
        }
    }
}

/// The secrets of a secret file's text: one per line, surrounding
/// whitespace trimmed; blank lines and lines starting with `#` are
/// skipped (so a secret cannot start with `#`). A UTF-8 byte order mark
/// at the start (Windows Notepad, PowerShell's `Out-File`) is not part of
/// the first line; a UTF-16 file is refused. Every problem is returned,
/// each as `line N: what` (`file` prefixes them).
pub fn parse(text: &[u8], file: &Path) -> Result<Vec<Vec<u8>>, Vec<String>> {
    if text.starts_with(&[0xFF, 0xFE]) || text.starts_with(&[0xFE, 0xFF]) {
        return Err(vec![format!(
            "{}: UTF-16 text (a byte order mark FF FE or FE FF); save it as UTF-8 or ASCII",
            file.display()
        )]);
    }
    let text = text.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(text);
    let mut secrets = Vec::new();
    let mut problems = Vec::new();
    let at = |n: usize| format!("{} line {n}", file.display());
    for (i, line) in text.split(|&b| b == b'\n').enumerate() {
        let secret = line.trim_ascii();
        if secret.is_empty() || secret.starts_with(b"#") {
            continue;
        }
        if secret.iter().any(|&b| b.is_ascii_control()) {
            problems.push(format!(
                "{}: holds control characters (NUL, tab, ...): not a secret as written \
                 (a UTF-16 file, or binary bytes? one printable secret per line)",
                at(i + 1)
            ));
            continue;
        }
        if secret.len() < MIN_SECRET_BYTES {
            problems.push(format!(
                "{}: a secret of {} bytes; at least {MIN_SECRET_BYTES} are needed \
                 (e.g. `openssl rand -hex 32`)",
                at(i + 1),
                secret.len()
            ));
            continue;
        }
        if secrets.len() == MAX_SECRETS {
            problems.push(format!(
                "{}: more than {MAX_SECRETS} secrets; keep the signing one (the first) \
                 and those still in use",
                at(i + 1)
            ));
            break;
        }
        secrets.push(secret.to_vec());
    }
    if secrets.is_empty() && problems.is_empty() {
        problems.push(format!(
            "{}: no secret in it (one secret per line; the first signs, every line verifies)",
            file.display()
        ));
    }
    if problems.is_empty() {
        Ok(secrets)
    } else {
        Err(problems)
    }
}

/// Read `file` (`path` as written, relative to `base`, the config file's
/// directory): refused when it cannot be read, is larger than
/// [`MAX_FILE_BYTES`], may be read by every user, or [`parse`] finds
/// problems. Each problem names the file.
pub fn read(path: &str, base: &Path) -> Result<FlowSecrets, Vec<String>> {
    if path.trim().is_empty() {
        return Err(vec![
            "empty; give the path of a file with one secret per line".into(),
        ]);
    }
    let file = base.join(path);
    let shown = file.display();
    let metadata =
        std::fs::metadata(&file).map_err(|e| vec![format!("{shown}: cannot read: {e}")])?;
    if !metadata.is_file() {
        return Err(vec![format!("{shown}: not a file")]);
    }
    if metadata.len() > MAX_FILE_BYTES {
        return Err(vec![format!(
            "{shown}: {} bytes, over {MAX_FILE_BYTES}: not a secret file",
            metadata.len()
        )]);
    }
    // Every problem at once: its mode and what it holds.
    let mode = world_readable(&metadata).map(|mode| {
        format!(
            "{shown}: every user may read it (mode {mode:04o}); \
             make it readable by sipadmit only (chmod 0600 or 0640)"
        )
    });
    let text = std::fs::read(&file).map_err(|e| vec![format!("{shown}: cannot read: {e}")])?;
    match (mode, parse(&text, &file)) {
        (None, Ok(secrets)) => Ok(FlowSecrets {
            source: SecretSource::File(file),
            secrets,
        }),
        (mode, Err(problems)) => Err(mode.into_iter().chain(problems).collect()),
        (Some(mode), Ok(_)) => Err(vec![mode]),
    }
}

/// The file's permission bits when every user may read it.
#[cfg(unix)]
fn world_readable(metadata: &std::fs::Metadata) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    let mode = metadata.permissions().mode() & 0o7777;
    (mode & 0o004 != 0).then_some(mode)
}

/// Elsewhere there are no such bits to check.
#[cfg(not(unix))]
fn world_readable(_: &std::fs::Metadata) -> Option<u32> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "0123456789abcdef0123";
    const B: &str = "fedcba9876543210fedc";

    fn file() -> &'static Path {
        Path::new("/etc/sipadmit/flow-secrets")
    }

    #[test]
    fn one_secret_per_line_the_first_signs() {
        let text = format!("# rotated 2024-05-01\n{B}\r\n\n   {A}  \n");
        let secrets = parse(text.as_bytes(), file()).unwrap();
        assert_eq!(secrets, [B.as_bytes(), A.as_bytes()]);
    }

    #[test]
    fn a_utf8_byte_order_mark_is_not_part_of_the_secret_and_utf16_is_refused() {
        let plain = format!("{A}\r\n{B}\r\n");
        let marked = [b"\xEF\xBB\xBF".as_slice(), plain.as_bytes()].concat();
        assert_eq!(
            parse(&marked, file()).unwrap(),
            parse(plain.as_bytes(), file()).unwrap()
        );
        let utf16: Vec<u8> = [0xFF, 0xFE]
            .into_iter()
            .chain(A.bytes().flat_map(|b| [b, 0]))
            .collect();
        assert_eq!(
            parse(&utf16, file()).unwrap_err(),
            ["/etc/sipadmit/flow-secrets: UTF-16 text (a byte order mark FF FE or FE FF); save it as UTF-8 or ASCII"]
        );
        // Without its mark, UTF-16 is a line of NULs: refused too.
        assert_eq!(
            parse(&utf16[2..], file()).unwrap_err(),
            ["/etc/sipadmit/flow-secrets line 1: holds control characters (NUL, tab, ...): not a secret as written (a UTF-16 file, or binary bytes? one printable secret per line)"]
        );
    }

    #[test]
    fn short_secrets_are_refused_by_line() {
        let text = format!("{A}\nshort\n# comment\n\t tiny \n");
        assert_eq!(
            parse(text.as_bytes(), file()).unwrap_err(),
            [
                "/etc/sipadmit/flow-secrets line 2: a secret of 5 bytes; at least 16 are needed (e.g. `openssl rand -hex 32`)",
                "/etc/sipadmit/flow-secrets line 4: a secret of 4 bytes; at least 16 are needed (e.g. `openssl rand -hex 32`)",
            ]
        );
    }

    #[test]
    fn an_empty_file_and_too_many_secrets_are_refused() {
        for empty in ["", "\n\n", "# only a comment\n"] {
            assert_eq!(
                parse(empty.as_bytes(), file()).unwrap_err(),
                ["/etc/sipadmit/flow-secrets: no secret in it (one secret per line; the first signs, every line verifies)"],
                "{empty:?}"
            );
        }
        let many: String = (0..=MAX_SECRETS).map(|i| format!("{A}{i}\n")).collect();
        assert_eq!(
            parse(many.as_bytes(), file()).unwrap_err(),
            ["/etc/sipadmit/flow-secrets line 9: more than 8 secrets; keep the signing one (the first) and those still in use"]
        );
    }

    #[test]
    fn inline_secrets_are_checked_and_never_shown() {
        assert_eq!(
            FlowSecrets::inline("short").unwrap_err(),
            "5 characters; at least 16 are needed"
        );
        let inline = FlowSecrets::inline(A).unwrap();
        assert_eq!(inline.key(), "proxy.flow_secret");
        assert_eq!(inline.secrets(), [A.as_bytes()]);
        let shown = format!("{inline:?}");
        assert!(!shown.contains(A), "{shown}");
        assert_eq!(shown, "FlowSecrets { source: Inline, secrets: 1 }");
    }

    #[cfg(unix)]
    #[test]
    fn the_file_must_exist_be_private_and_hold_secrets() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let missing = read("missing", dir.path()).unwrap_err();
        assert_eq!(missing.len(), 1);
        assert!(
            missing[0].starts_with(&format!(
                "{}: cannot read: ",
                dir.path().join("missing").display()
            )),
            "{missing:?}"
        );
        let path = dir.path().join("secrets");
        std::fs::write(&path, format!("{B}\n{A}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(
            read("secrets", dir.path()).unwrap_err(),
            [format!(
                "{}: every user may read it (mode 0644); make it readable by sipadmit only (chmod 0600 or 0640)",
                path.display()
            )]
        );
        // Both its mode and what it holds are told at once.
        let short = dir.path().join("short");
        std::fs::write(&short, "tiny\n").unwrap();
        std::fs::set_permissions(&short, std::fs::Permissions::from_mode(0o644)).unwrap();
        let problems = read("short", dir.path()).unwrap_err();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems[0].contains("every user may read it"),
            "{problems:?}"
        );
        assert!(
            problems[1].contains("line 1: a secret of 4 bytes"),
            "{problems:?}"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let secrets = read("secrets", dir.path()).unwrap();
        assert_eq!(secrets.secrets(), [B.as_bytes(), A.as_bytes()]);
        assert_eq!(secrets.source, SecretSource::File(path.clone()));
        assert_eq!(secrets.key(), "proxy.flow_secret_file");
        // An absolute path ignores the base.
        let absolute = read(&path.display().to_string(), Path::new("/nonexistent")).unwrap();
        assert_eq!(absolute, secrets);
        assert_eq!(
            read(" ", dir.path()).unwrap_err(),
            ["empty; give the path of a file with one secret per line"]
        );
        assert_eq!(
            read(".", dir.path()).unwrap_err(),
            [format!("{}: not a file", dir.path().join(".").display())]
        );
    }
}
