//! Stage 3, classify: which client product sent this message?
//!
//! Maps a User-Agent (or Server) header value to a client product of the
//! catalog (`config/clients.toml`). Pure: no I/O on the per-message path,
//! nothing compiled or allocated per message. The catalog is compiled once
//! per config generation.
//!
//! - [`tokenize`]: RFC 3261 `server-val` tokenizer over bytes.
//! - [`Version`], [`CompareOp`]: `major.minor.build.qfe` and Lync's EQL..LEQ.
//! - [`Catalog`]: TOML → validated, compiled rules; [`Catalog::classify`].
//!
//! The User-Agent is self-reported and can be spoofed: classification is a
//! compatibility and policy control, not a security boundary.

use std::fmt;

use serde::{Deserialize, Serialize};

mod catalog;
#[cfg(test)]
mod corpus_tests;
mod memo;
mod tokenize;
mod version;

pub use catalog::{Catalog, CatalogError, MAX_UA_ITEMS};
pub use tokenize::{tokenize, Item, Tokens};
pub use version::{CompareOp, InvalidVersion, Version, MAX_VERSION_PARTS};

/// Id of the built-in client for an absent, empty or whitespace-only User-Agent.
pub const CLIENT_MISSING: &str = "missing";
/// Id of the built-in client for a User-Agent that no catalog rule matches.
pub const CLIENT_UNKNOWN: &str = "unknown";
/// Rule id reported with [`CLIENT_MISSING`].
pub const RULE_MISSING: &str = "builtin:missing";
/// Rule id reported with [`CLIENT_UNKNOWN`].
pub const RULE_UNKNOWN: &str = "builtin:unknown";

/// A client product of the catalog (or one of the built-ins `missing`, `unknown`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClientProduct {
    /// Stable id used in policies and logs, e.g. `lync-2013`.
    pub id: String,
    /// Display name, e.g. `Lync 2013`.
    pub name: String,
    /// What kind of client it is.
    pub category: Category,
    /// Whether the Response Group application supports it.
    pub support: Support,
    /// The Response Group roles the application supports it in (empty for
    /// unsupported clients, services, scanners and built-ins).
    pub roles: Vec<Role>,
}

impl ClientProduct {
    /// Whether the client may take `role` in a Response Group session.
    pub fn has_role(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }
}

/// The result of classifying one User-Agent; borrows from the [`Catalog`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Classification<'c> {
    /// The client product.
    pub client: &'c ClientProduct,
    /// Version of the client's `version_token` if present in the value,
    /// else of the token the rule matched, else of the `version` group of
    /// the regex the rule matched, else `None`.
    pub version: Option<Version>,
    /// Id of the rule that matched, or `builtin:missing` / `builtin:unknown`.
    pub rule: &'c str,
}

/// What kind of client a product is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Category {
    /// Desktop UC client (Lync, Skype for Business, Communicator).
    Desktop,
    /// Attendant console (Lync 2010 Attendant, OCS 2007 R2 Attendant).
    Attendant,
    /// Desk phone (Lync Phone Edition, third-party handsets).
    Phone,
    /// Mobile client (Lync mobile, mobile softphones).
    Mobile,
    /// Browser-based client (Lync Web App).
    Web,
    /// Server component (Mediation Server, Response Group application, ...).
    Service,
    /// PSTN gateway, SBC or video infrastructure.
    Gateway,
    /// Third-party client that is not a phone, gateway or mobile client.
    ThirdParty,
    /// SIP scanner or attack tool.
    Scanner,
    /// No catalog entry matched, or the header was missing.
    Unknown,
}

/// Whether the Response Group application supports a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Support {
    /// Listed by Microsoft as a supported Response Group client.
    Supported,
    /// A Microsoft client that the Response Group application does not support (mobile, Mac, web, ...).
    Unsupported,
    /// A server component (never blocked).
    Service,
    /// A non-Microsoft client: support unknown, policy decides.
    ThirdParty,
    /// A scanner: dropped by default.
    Scanner,
    /// Nothing matched, or the User-Agent was missing or empty.
    Unknown,
}

/// A Response Group role a client may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Calls a workflow URI.
    Caller,
    /// Agent that is signed in to its groups automatically.
    InformalAgent,
    /// Agent that signs in and out of its groups through the agent console.
    FormalAgent,
}

impl Category {
    /// Every category, in declaration order (`Unknown` last).
    pub const ALL: [Self; 10] = [
        Self::Desktop,
        Self::Attendant,
        Self::Phone,
        Self::Mobile,
        Self::Web,
        Self::Service,
        Self::Gateway,
        Self::ThirdParty,
        Self::Scanner,
        Self::Unknown,
    ];

    /// The kebab-case name used in config files, logs and JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Desktop => "desktop",
            Self::Attendant => "attendant",
            Self::Phone => "phone",
            Self::Mobile => "mobile",
            Self::Web => "web",
            Self::Service => "service",
            Self::Gateway => "gateway",
            Self::ThirdParty => "third-party",
            Self::Scanner => "scanner",
            Self::Unknown => "unknown",
        }
    }
}

impl Support {
    /// Every support level, in declaration order (`Unknown` last).
    pub const ALL: [Self; 6] = [
        Self::Supported,
        Self::Unsupported,
        Self::Service,
        Self::ThirdParty,
        Self::Scanner,
        Self::Unknown,
    ];

    /// The kebab-case name used in config files, logs and JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Supported => "supported",
            Self::Unsupported => "unsupported",
            Self::Service => "service",
            Self::ThirdParty => "third-party",
            Self::Scanner => "scanner",
            Self::Unknown => "unknown",
        }
    }
}

impl Role {
    /// The kebab-case name used in config files, logs and JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Caller => "caller",
            Self::InformalAgent => "informal-agent",
            Self::FormalAgent => "formal-agent",
        }
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Support {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
