//! What a client version policy rule says about Response Group support.
//!
//! A policy's `Allow` lets a client *sign in*; whether the Response Group
//! application supports the client is a fact of the product (Microsoft's
//! "Clients supported for Response Group": Lync 2013 and Lync 2010 desktop,
//! the Lync 2010 and OCS 2007 R2 Attendants, Lync Phone Edition, and, with
//! Skype for Business Server, Skype for Business desktop; not the mobile
//! clients). So an imported `Allow` is `supported` only for the clients of
//! its `UserAgent` code that the Response Group application supports;
//! `Block` is `unsupported` whatever the client.

/// Response Group support of the clients a `UserAgent` code names (the
/// codes of the Lync Server Control Panel, and the OCS 2007 ones).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CodeSupport {
    /// A code sipadmit knows nothing of (a third-party product, an
    /// in-house client): the policy's `Allow` is all there is to go by.
    NotKnown,
    /// Every client of the code is supported, in these roles (TOML array).
    Supported {
        /// The roles, as the entry writes them.
        roles: &'static str,
    },
    /// No client of the code is supported.
    Unsupported {
        /// Which clients, for the note (`mobile clients`).
        clients: &'static str,
    },
    /// `OC` and `UCCAPI`: supported from major version 4 (Lync 2010, Lync
    /// 2013, Skype for Business); below 4 (Office Communicator 2007 R2 and
    /// earlier) only a client whose comment names the Attendant (the OCS
    /// 2007 R2 Attendant).
    FromLync2010,
}

/// Every Response Group role.
pub(super) const ALL_ROLES: &str = r#"["caller", "informal-agent", "formal-agent"]"#;

/// The first major version of the `OC` / `UCCAPI` clients the Response
/// Group application supports (Lync 2010 is `OC/4.0.7577`).
pub(super) const LYNC_2010_MAJOR: u32 = 4;

/// The comment that marks an Attendant (`(Microsoft Office Communications
/// Server 2007 R2 Attendant)`), as the shipped catalog matches it.
pub(super) const ATTENDANT_COMMENT: &str = "Attendant";

/// Which clients a note names.
const MOBILE: &str = "mobile clients";
/// Which clients a note names.
const NOT_LISTED: &str = "clients that are not on its client list";
/// The codes sipadmit knows, and the support of their clients.
const CODES: [(&str, CodeSupport); 21] = [
    ("OC", CodeSupport::FromLync2010),
    ("UCCAPI", CodeSupport::FromLync2010),
    // Lync Phone Edition: callers and informal agents; formal agents
    // need Lync 2013 or an Attendant.
    (
        "OCPhone",
        CodeSupport::Supported {
            roles: r#"["caller", "informal-agent"]"#,
        },
    ),
    (
        "CPE",
        CodeSupport::Supported {
            roles: r#"["caller", "informal-agent"]"#,
        },
    ),
    ("iPhoneLync", CodeSupport::Unsupported { clients: MOBILE }),
    ("iPadLync", CodeSupport::Unsupported { clients: MOBILE }),
    ("WPLync", CodeSupport::Unsupported { clients: MOBILE }),
    ("NokiaLync", CodeSupport::Unsupported { clients: MOBILE }),
    ("AndroidLync", CodeSupport::Unsupported { clients: MOBILE }),
    ("McxService", CodeSupport::Unsupported { clients: MOBILE }),
    ("COMO", CodeSupport::Unsupported { clients: MOBILE }),
    (
        "CWA",
        CodeSupport::Unsupported {
            clients: "web clients",
        },
    ),
    (
        "LWA",
        CodeSupport::Unsupported {
            clients: "web clients",
        },
    ),
    // Communicator 2007, the Lync 2010 Attendee, Live Meeting, Windows
    // Messenger / RTC clients, Communicator 2005, Lync for Mac.
    (
        "UCCP",
        CodeSupport::Unsupported {
            clients: NOT_LISTED,
        },
    ),
    (
        "AOC",
        CodeSupport::Unsupported {
            clients: NOT_LISTED,
        },
    ),
    (
        "LMC",
        CodeSupport::Unsupported {
            clients: NOT_LISTED,
        },
    ),
    (
        "LiveMeetingAddins",
        CodeSupport::Unsupported {
            clients: NOT_LISTED,
        },
    ),
    (
        "WM",
        CodeSupport::Unsupported {
            clients: NOT_LISTED,
        },
    ),
    (
        "RTC",
        CodeSupport::Unsupported {
            clients: NOT_LISTED,
        },
    ),
    (
        "LCC",
        CodeSupport::Unsupported {
            clients: NOT_LISTED,
        },
    ),
    (
        "MC",
        CodeSupport::Unsupported {
            clients: NOT_LISTED,
        },
    ),
];

/// The Response Group support of the clients of `code` (case-insensitive).
pub(super) fn code_support(code: &str) -> CodeSupport {
    CODES
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(code))
        .map_or(CodeSupport::NotKnown, |&(_, support)| support)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_compare_case_insensitively() {
        assert_eq!(code_support("oc"), CodeSupport::FromLync2010);
        assert_eq!(
            code_support("ANDROIDLYNC"),
            CodeSupport::Unsupported {
                clients: "mobile clients"
            }
        );
        assert_eq!(code_support("InHouse"), CodeSupport::NotKnown);
    }
}
