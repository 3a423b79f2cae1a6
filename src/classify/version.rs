//! Product versions (`major.minor.build.qfe`) and the comparison operators of
//! Lync's client version policy (EQL, NEQ, GTR, GEQ, LSS, LEQ).
//!
//! Pure and allocation-free: a [`Version`] is four integers and a part count.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;

/// Maximum number of numeric parts a [`Version`] keeps (Microsoft `major.minor.build.qfe`).
pub const MAX_VERSION_PARTS: usize = 4;

/// A product version of up to four numeric parts.
///
/// Ordering, equality and hashing compare the four parts as a tuple with
/// missing parts counted as 0, so `15` == `15.0` == `15.0.0.0` and
/// `4.0.7577.314` < `15`. [`Display`](fmt::Display) prints the parts that were
/// given, in normalised decimal (`15.01` prints as `15.1`).
#[derive(Debug, Clone, Copy)]
pub struct Version {
    parts: [u32; MAX_VERSION_PARTS],
    len: u8,
}

/// Error of [`Version::from_str`]: the text is not 1 to 4 dot-separated decimal numbers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid version {text:?}: expected 1 to 4 dot-separated numbers, e.g. \"15\" or \"4.0.7577.4363\"")]
pub struct InvalidVersion {
    /// The rejected text.
    pub text: String,
}

impl Version {
    /// A four-part version.
    pub const fn new(major: u32, minor: u32, build: u32, qfe: u32) -> Self {
        Self {
            parts: [major, minor, build, qfe],
            len: 4,
        }
    }

    /// Parses the version text of a User-Agent product token, leniently.
    ///
    /// Takes the leading numeric dotted parts (at most four) and ignores what
    /// follows: `4.1.5-rc` is `4.1.5`, `6.4.1.2280_48` is `6.4.1.2280`,
    /// `42.076.00.000.000` is `42.76.0.0`. One leading `v` or `V`, optionally
    /// followed by a dot, is skipped (`v1.8`, `v.5.80A` are `1.8`, `5.80`).
    /// A part too large for `u32` saturates. Returns `None` when no digit
    /// starts the (possibly `v`-prefixed) text.
    pub fn parse(text: &[u8]) -> Option<Self> {
        let mut rest = text;
        if let [b'v' | b'V', tail @ ..] = rest {
            rest = tail;
            if let [b'.', tail @ ..] = rest {
                rest = tail;
            }
        }
        let mut version = Self {
            parts: [0; MAX_VERSION_PARTS],
            len: 0,
        };
        let mut i = 0;
        loop {
            let start = i;
            let mut value: u32 = 0;
            while let Some(&b) = rest.get(i) {
                if !b.is_ascii_digit() {
                    break;
                }
                value = value.saturating_mul(10).saturating_add(u32::from(b - b'0'));
                i += 1;
            }
            if i == start {
                break;
            }
            version.parts[usize::from(version.len)] = value;
            version.len += 1;
            let next_is_part = rest.get(i) == Some(&b'.')
                && rest.get(i + 1).is_some_and(u8::is_ascii_digit)
                && usize::from(version.len) < MAX_VERSION_PARTS;
            if !next_is_part {
                break;
            }
            i += 1;
        }
        (version.len > 0).then_some(version)
    }

    /// The four parts; parts that were not given are 0.
    pub fn parts(&self) -> [u32; MAX_VERSION_PARTS] {
        self.parts
    }

    /// How many parts were given (1 to 4).
    pub fn part_count(&self) -> usize {
        usize::from(self.len)
    }

    /// The major version (first part).
    pub fn major(&self) -> u32 {
        self.parts[0]
    }

    /// The minor version (second part, 0 if not given).
    pub fn minor(&self) -> u32 {
        self.parts[1]
    }

    /// The build number (third part, 0 if not given).
    pub fn build(&self) -> u32 {
        self.parts[2]
    }

    /// The QFE number (fourth part, 0 if not given).
    pub fn qfe(&self) -> u32 {
        self.parts[3]
    }
}

impl FromStr for Version {
    type Err = InvalidVersion;

    /// Strict parse for configuration files: the whole text must be 1 to 4
    /// dot-separated decimal numbers (no `v` prefix, no suffix).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidVersion {
            text: text.to_owned(),
        };
        let well_formed = !text.is_empty()
            && text.split('.').count() <= MAX_VERSION_PARTS
            && text
                .split('.')
                .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()));
        if !well_formed {
            return Err(invalid());
        }
        Self::parse(text.as_bytes()).ok_or_else(invalid)
    }
}

impl PartialEq for Version {
    fn eq(&self, other: &Self) -> bool {
        self.parts == other.parts
    }
}

impl Eq for Version {}

impl Hash for Version {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.parts.hash(state);
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        self.parts.cmp(&other.parts)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, part) in self.parts[..self.part_count()].iter().enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            write!(f, "{part}")?;
        }
        Ok(())
    }
}

// === impl CompareOp ===

/// A version comparison of Lync's client version policy (`-CompareOp`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CompareOp {
    /// Same as (`==`).
    Eql,
    /// Is not (`!=`).
    Neq,
    /// Newer than (`>`).
    Gtr,
    /// Newer than or same as (`>=`).
    Geq,
    /// Older than (`<`).
    Lss,
    /// Older than or same as (`<=`).
    Leq,
}

impl CompareOp {
    /// Every operator, in Lync's order.
    pub const ALL: [Self; 6] = [
        Self::Eql,
        Self::Neq,
        Self::Gtr,
        Self::Geq,
        Self::Lss,
        Self::Leq,
    ];

    /// The Lync name (`EQL`, `NEQ`, `GTR`, `GEQ`, `LSS`, `LEQ`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Eql => "EQL",
            Self::Neq => "NEQ",
            Self::Gtr => "GTR",
            Self::Geq => "GEQ",
            Self::Lss => "LSS",
            Self::Leq => "LEQ",
        }
    }

    /// Looks an operator up by its Lync name, case-insensitively.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|op| op.as_str().eq_ignore_ascii_case(name))
    }

    /// Whether `actual <op> wanted` holds (4-tuple comparison, missing parts 0).
    pub fn holds(self, actual: Version, wanted: Version) -> bool {
        let ord = actual.cmp(&wanted);
        match self {
            Self::Eql => ord == Ordering::Equal,
            Self::Neq => ord != Ordering::Equal,
            Self::Gtr => ord == Ordering::Greater,
            Self::Geq => ord != Ordering::Less,
            Self::Lss => ord == Ordering::Less,
            Self::Leq => ord != Ordering::Greater,
        }
    }
}

impl fmt::Display for CompareOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(text: &str) -> Version {
        Version::parse(text.as_bytes()).unwrap_or_else(|| panic!("no version in {text:?}"))
    }

    #[test]
    fn parses_microsoft_versions() {
        let lync = v("15.0.4420.1017");
        assert_eq!(lync.parts(), [15, 0, 4420, 1017]);
        assert_eq!(lync.part_count(), 4);
        assert_eq!(
            (lync.major(), lync.minor(), lync.build(), lync.qfe()),
            (15, 0, 4420, 1017)
        );
        assert_eq!(lync.to_string(), "15.0.4420.1017");
        assert_eq!(v("16.0.12527.20194").build(), 12527);
    }

    #[test]
    fn parses_leniently() {
        assert_eq!(v("v1.8").to_string(), "1.8");
        assert_eq!(v("V2").to_string(), "2");
        assert_eq!(v("v.5.80A.055.002").to_string(), "5.80");
        assert_eq!(v("4.1.5-rc").to_string(), "4.1.5");
        assert_eq!(v("6.4.1.2280_482567164887").to_string(), "6.4.1.2280");
        assert_eq!(v("42.076.00.000.000").to_string(), "42.76.0.0");
        assert_eq!(v("12.").to_string(), "12");
        assert_eq!(v("99999999999999").major(), u32::MAX);
        for none in ["", "x1", "IOS-12.x", "r2457", "v", "v.", ".1", "-1"] {
            assert_eq!(Version::parse(none.as_bytes()), None, "{none:?}");
        }
    }

    #[test]
    fn from_str_is_strict() {
        assert_eq!("15".parse::<Version>(), Ok(Version::new(15, 0, 0, 0)));
        assert_eq!(
            "4.0.7577.4363".parse::<Version>().map(|x| x.to_string()),
            Ok("4.0.7577.4363".to_owned())
        );
        for bad in ["", "v15", "15.", "1.2.3.4.5", "4.1.5-rc", "1..2", " 1"] {
            assert!(bad.parse::<Version>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn orders_as_four_tuples_with_missing_parts_zero() {
        assert_eq!(v("15"), v("15.0.0.0"));
        assert_eq!(v("15.0"), v("15"));
        assert!(v("4.0.7577.314") < v("15"));
        assert!(v("4.0.7577.4398") > v("4.0.7577.314"));
        assert!(v("16.0.4591.1000") < v("16.0.4600.1000"));
        assert!(v("3.5") > v("3.4.9999.9999"));
        assert!(v("3.5") < v("3.5.0.1"));
        let mut sorted = [v("16"), v("4.0.7577"), v("15.0.4420.1017"), v("3.5.6907")];
        sorted.sort();
        assert_eq!(
            sorted.map(|x| x.major()),
            [3, 4, 15, 16],
            "sorted by 4-tuple"
        );
    }

    #[test]
    fn every_compare_op() {
        let lower = v("4.0.7577.313");
        let same = v("4.0.7577.314");
        let higher = v("15");
        let cases = [
            (CompareOp::Eql, [false, true, false]),
            (CompareOp::Neq, [true, false, true]),
            (CompareOp::Gtr, [false, false, true]),
            (CompareOp::Geq, [false, true, true]),
            (CompareOp::Lss, [true, false, false]),
            (CompareOp::Leq, [true, true, false]),
        ];
        for (op, expected) in cases {
            // actual <op> wanted, with wanted = same
            let got = [
                op.holds(lower, same),
                op.holds(same, same),
                op.holds(higher, same),
            ];
            assert_eq!(got, expected, "{op}");
        }
        assert!(CompareOp::Eql.holds(v("15.0"), v("15")));
    }

    #[test]
    fn compare_op_names() {
        for op in CompareOp::ALL {
            assert_eq!(CompareOp::from_name(op.as_str()), Some(op));
            assert_eq!(
                CompareOp::from_name(&op.as_str().to_ascii_lowercase()),
                Some(op)
            );
        }
        assert_eq!(CompareOp::from_name("GE"), None);
        assert_eq!(CompareOp::from_name(">="), None);
    }
}
