//! Stage 3, classify: which client product sent this message?
//!
//! Maps a User-Agent (or Server) header value to a client product of the
//! catalog (`config/clients.toml`). Pure: no I/O on the per-message path,
//! nothing compiled per message. The catalog is compiled once per config
//! generation.

use std::fmt;

use serde::{Deserialize, Serialize};

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
