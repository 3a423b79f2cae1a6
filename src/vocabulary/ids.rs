//! Identities of connections and flows, scoped so that one cannot be taken
//! for another.
//!
//! A bare per-process counter is not an identity once it leaves the process:
//! connection 1 of yesterday's process, named in a flow token the registrar
//! kept, is not connection 1 of today's. So a stream flow is named by a
//! [`FlowId`]: the [`BootId`] of the serving instance that accepted the
//! connection plus that instance's [`ConnectionId`]. A flow token carries
//! the whole [`FlowId`], and only the instance with that boot id may write to
//! the connection (and only while its peer is still the token's peer).

use std::fmt;
use std::num::NonZeroU64;

/// A random 64-bit number drawn once when a serving instance starts (once
/// per `sipadmit run` process): it scopes [`ConnectionId`]s, so that the
/// connection ids of two processes, or of one process before and after a
/// restart, never name the same flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BootId(u64);

impl BootId {
    /// A fresh random boot id.
    pub fn random() -> Self {
        Self(rand::random())
    }

    /// A boot id with a given value (tokens carry it; tests fix it).
    pub const fn from_u64(value: u64) -> Self {
        Self(value)
    }

    /// The value, as carried in flow tokens.
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for BootId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// A stream connection of one serving instance: a counter, never 0, never
/// reused while the instance runs. Meaningless without the instance's
/// [`BootId`] (see [`FlowId`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(NonZeroU64);

impl ConnectionId {
    /// The first id an instance hands out.
    pub const FIRST: Self = Self(NonZeroU64::MIN);

    /// The id with this value; `None` for 0.
    pub fn new(value: u64) -> Option<Self> {
        NonZeroU64::new(value).map(Self)
    }

    /// The id `n` places after [`ConnectionId::FIRST`] (saturating).
    pub fn nth(n: u64) -> Self {
        Self(NonZeroU64::MIN.saturating_add(n))
    }

    /// The value, as carried in flow tokens.
    pub const fn get(self) -> u64 {
        self.0.get()
    }
}

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A stream flow anywhere in a pool: which instance ([`BootId`]) holds the
/// connection, and which connection of that instance it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowId {
    /// The instance that accepted (or opened) the connection.
    pub boot: BootId,
    /// The connection within that instance.
    pub connection: ConnectionId,
}

impl fmt::Display for FlowId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.boot, self.connection)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_ids_are_never_zero_and_boot_ids_differ() {
        assert_eq!(ConnectionId::new(0), None);
        assert_eq!(ConnectionId::nth(0), ConnectionId::FIRST);
        assert_eq!(ConnectionId::nth(4).get(), 5);
        assert_eq!(ConnectionId::nth(u64::MAX).get(), u64::MAX);
        // Two draws of 64 random bits: equal once in 2^64.
        assert_ne!(BootId::random(), BootId::random());
        let id = FlowId {
            boot: BootId::from_u64(0xab),
            connection: ConnectionId::FIRST,
        };
        assert_eq!(id.to_string(), "00000000000000ab/1");
    }
}
