//! One wording for a number outside the range its key allows, so that
//! every range error of a configuration file reads the same way:
//! `1000 bytes is below the minimum 1024 bytes`, then what the admin needs
//! to know to pick a value (the default, what 0 means, which other key the
//! bound comes from).

/// The unit a key's numbers are given in, written after each of them in
/// the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Unit {
    /// A plain count (connections, headers, workers): no unit written.
    Count,
    /// Bytes.
    Bytes,
    /// Seconds.
    Seconds,
    /// Milliseconds.
    Milliseconds,
}

impl Unit {
    fn suffix(self) -> &'static str {
        match self {
            Self::Count => "",
            Self::Bytes => " bytes",
            Self::Seconds => " s",
            Self::Milliseconds => " ms",
        }
    }
}

/// What a key allows: `min..=max` in `unit`; its message adds `note` (what
/// 0 means, where a bound comes from) and the key's default.
#[derive(Debug, Clone, Copy)]
pub(super) struct Bounds {
    /// The smallest value allowed.
    pub min: u64,
    /// The largest value allowed.
    pub max: u64,
    /// What the numbers count.
    pub unit: Unit,
    /// Added to the message in parentheses, when not empty.
    pub note: &'static str,
    /// The key's default, added to the message when known.
    pub default: Option<u64>,
}

impl Bounds {
    /// `min..=max` in `unit`, with no note.
    pub fn new(min: u64, max: u64, unit: Unit) -> Self {
        Self {
            min,
            max,
            unit,
            note: "",
            default: None,
        }
    }

    /// The same bounds with `note` added to their message.
    pub fn noting(self, note: &'static str) -> Self {
        Self { note, ..self }
    }

    /// The same bounds with the key's `default` added to their message.
    pub fn defaulting_to(self, default: impl TryInto<u64>) -> Self {
        Self {
            default: default.try_into().ok(),
            ..self
        }
    }

    /// `None` when `value` lies within the bounds, else the message:
    /// `"{value} is below the minimum {min}"` or `"{value} is above the
    /// maximum {max}"`, each number with its unit, then in parentheses
    /// the note and the default.
    pub fn check(&self, value: impl TryInto<u64>) -> Option<String> {
        let value = value.try_into().unwrap_or(u64::MAX);
        let unit = self.unit.suffix();
        let (side, bound) = if value < self.min {
            ("below the minimum", self.min)
        } else if value > self.max {
            ("above the maximum", self.max)
        } else {
            return None;
        };
        let default = self.default.map(|d| format!("default {d}{unit}"));
        let said: Vec<&str> = [Some(self.note), default.as_deref()]
            .into_iter()
            .flatten()
            .filter(|s| !s.is_empty())
            .collect();
        let after = if said.is_empty() {
            String::new()
        } else {
            format!(" ({})", said.join("; "))
        };
        Some(format!("{value}{unit} is {side} {bound}{unit}{after}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_within_its_bounds_is_no_problem() {
        let bounds = Bounds::new(1, 300, Unit::Seconds);
        assert_eq!(bounds.check(1u64), None);
        assert_eq!(bounds.check(300u64), None);
    }

    #[test]
    fn each_side_names_its_bound_with_the_unit_and_the_note() {
        let bounds = Bounds::new(64 << 10, 1 << 30, Unit::Bytes).defaulting_to(4usize << 20);
        assert_eq!(
            bounds.check(1024usize).unwrap(),
            "1024 bytes is below the minimum 65536 bytes (default 4194304 bytes)"
        );
        assert_eq!(
            bounds.check((1usize << 30) + 1).unwrap(),
            "1073741825 bytes is above the maximum 1073741824 bytes (default 4194304 bytes)"
        );
        assert_eq!(
            Bounds::new(60, 604_800, Unit::Seconds)
                .noting("0: no known flows")
                .defaulting_to(3600u64)
                .check(59u64)
                .unwrap(),
            "59 s is below the minimum 60 s (0: no known flows; default 3600 s)"
        );
        assert_eq!(
            Bounds::new(16, 1 << 20, Unit::Count).check(3u32).unwrap(),
            "3 is below the minimum 16"
        );
        assert_eq!(
            Bounds::new(50, 10_000, Unit::Milliseconds)
                .check(20_000u64)
                .unwrap(),
            "20000 ms is above the maximum 10000 ms"
        );
    }
}
