//! What a client version policy rule says about Response Group support.
//!
//! A policy's `Allow` lets a client *sign in*; whether the Response Group
//! application supports the client is a fact of the product (Microsoft's
//! "Clients supported for Response Group": Lync 2013 and Lync 2010 desktop,
//! the Lync 2010 and OCS 2007 R2 Attendants, Lync Phone Edition, and, with
//! Skype for Business Server, Skype for Business desktop; not the mobile
//! clients). So an imported `Allow` is `supported` only for the clients of
//! its `UserAgent` code that the Response Group application supports, in
//! the roles it supports them in (Lync 2010 desktop and Lync Phone Edition:
//! callers and informal agents; formal agents need Lync 2013 or an
//! Attendant); `Block` is `unsupported` whatever the client.

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
    /// `OC` and `UCCAPI`: supported from major version 4, in the roles of
    /// the client: from 15 (Lync 2013, Skype for Business) every role; 4 to
    /// 14 (Lync 2010) caller and informal agent, but every role for a
    /// client whose comment names the Attendant (the Lync 2010 Attendant);
    /// 3.x (Office Communicator 2007 R2) unsupported but for the Attendant
    /// (the OCS 2007 R2 Attendant, every role); below 3 unsupported. The
    /// bands are in `translate/plan.rs`.
    FromLync2010,
}

/// Every Response Group role.
pub(super) const ALL_ROLES: &str = r#"["caller", "informal-agent", "formal-agent"]"#;

/// The first major version of the `OC` / `UCCAPI` clients the Response
/// Group application supports (Lync 2010 is `OC/4.0.7577`).
pub(super) const LYNC_2010_MAJOR: u32 = 4;

/// The first major version of Lync 2013 (`OC/15.0.4481`): every role.
pub(super) const LYNC_2013_MAJOR: u32 = 15;

/// The comment that marks an Attendant (`(Microsoft Office Communications
/// Server 2007 R2 Attendant)`), as the shipped catalog matches it.
pub(super) const ATTENDANT_COMMENT: &str = "Attendant";

/// Which clients a note names.
const MOBILE: &str = "mobile clients";
/// Which clients a note names.
const WEB: &str = "web clients";
/// Which clients a note names.
const NOT_LISTED: &str = "clients that are not on its client list";

/// Lync Phone Edition: callers and informal agents; formal agents need
/// Lync 2013 or an Attendant.
const PHONE: CodeSupport = CodeSupport::Supported {
    roles: r#"["caller", "informal-agent"]"#,
};

/// The support of a mobile client's code.
const MOBILE_CLIENTS: CodeSupport = CodeSupport::Unsupported { clients: MOBILE };

/// The support of a code of clients not on Response Group's client list.
const NOT_LISTED_CLIENTS: CodeSupport = CodeSupport::Unsupported {
    clients: NOT_LISTED,
};

/// A code sipadmit knows: its catalog category, and the Response Group
/// support of its clients.
#[derive(Debug, Clone, Copy)]
pub(super) struct Code {
    /// The `UserAgent` code (compared case-insensitively).
    pub(super) name: &'static str,
    /// The catalog `category` of its clients.
    pub(super) category: &'static str,
    /// The Response Group support of its clients.
    pub(super) support: CodeSupport,
}

/// A row of [`CODES`].
const fn code(name: &'static str, category: &'static str, support: CodeSupport) -> Code {
    Code {
        name,
        category,
        support,
    }
}

/// The codes sipadmit knows (those of the Lync Server Control Panel, and
/// the OCS 2007 ones): category and support.
const CODES: [Code; 21] = [
    code("OC", "desktop", CodeSupport::FromLync2010),
    code("UCCAPI", "desktop", CodeSupport::FromLync2010),
    code("OCPhone", "phone", PHONE),
    code("CPE", "phone", PHONE),
    code("iPhoneLync", "mobile", MOBILE_CLIENTS),
    code("iPadLync", "mobile", MOBILE_CLIENTS),
    code("WPLync", "mobile", MOBILE_CLIENTS),
    code("NokiaLync", "mobile", MOBILE_CLIENTS),
    code("AndroidLync", "mobile", MOBILE_CLIENTS),
    code("McxService", "mobile", MOBILE_CLIENTS),
    code("COMO", "mobile", MOBILE_CLIENTS),
    code("CWA", "web", CodeSupport::Unsupported { clients: WEB }),
    code("LWA", "web", CodeSupport::Unsupported { clients: WEB }),
    // Communicator 2007, the Lync 2010 Attendee, Live Meeting, Windows
    // Messenger / RTC clients, Communicator 2005, Lync for Mac.
    code("UCCP", "desktop", NOT_LISTED_CLIENTS),
    code("AOC", "desktop", NOT_LISTED_CLIENTS),
    code("LMC", "desktop", NOT_LISTED_CLIENTS),
    code("LiveMeetingAddins", "desktop", NOT_LISTED_CLIENTS),
    code("WM", "desktop", NOT_LISTED_CLIENTS),
    code("RTC", "desktop", NOT_LISTED_CLIENTS),
    code("LCC", "desktop", NOT_LISTED_CLIENTS),
    code("MC", "desktop", NOT_LISTED_CLIENTS),
];

/// The row of `code` (case-insensitive), if sipadmit knows it.
fn find(code: &str) -> Option<&'static Code> {
    CODES.iter().find(|c| c.name.eq_ignore_ascii_case(code))
}

/// The Response Group support of the clients of `code` (case-insensitive).
pub(super) fn code_support(code: &str) -> CodeSupport {
    find(code).map_or(CodeSupport::NotKnown, |c| c.support)
}

/// The catalog category of the clients of `code` (case-insensitive);
/// `third-party` for a code sipadmit does not know.
pub(super) fn code_category(code: &str) -> &'static str {
    find(code).map_or("third-party", |c| c.category)
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
        assert_eq!(code_category("cpe"), "phone");
        assert_eq!(code_category("InHouse"), "third-party");
    }
}
