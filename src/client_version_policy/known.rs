//! User-Agents of the clients sipadmit's shipped catalog knows, used to
//! tell which known clients an imported rule would take, and what the
//! shipped catalog says of them: the Microsoft clients and servers (the
//! grammar of the design's domain facts), and the third-party mobile
//! softphones of the test corpus with the third-party products that share
//! a product token with them. The strings are rows of
//! `tests/corpus/user-agents.tsv` and `user-agents-extra.tsv`.

use crate::classify::{Catalog, Role, Support};

/// One of each Microsoft client and server component (and a few builds
/// where a policy's version comparisons part them).
const MICROSOFT: [&str; 33] = [
    "UCCAPI/16.0.4417.1000 OC/16.0.4417.1000 (Skype for Business)",
    "UCCAPI/15.0.4971.1000 OC/15.0.4971.1000 (Skype for Business)",
    "UCCAPI/15.0.4481.1000 OC/15.0.4481.1000 (Microsoft Lync)",
    "UCCAPI/15.0.4420.1017 OC/15.0.4420.1017 (Microsoft Lync)",
    "UCCAPI/4.0.7577.4398 OC/4.0.7577.4398 (Microsoft Lync 2010)",
    "UCCAPI/4.0.7577.314 OC/4.0.7577.314 (Microsoft Lync 2010)",
    "UCCAPI/4.0.7577.0 OC/4.0.7577.0 (Microsoft Lync 2010 Attendant)",
    "UCCAPI/3.5.6907.0 OC/3.5.6907.0 (Microsoft Office Communications Server 2007 R2 Attendant)",
    "UCCAPI/3.5.6907.0 OC/3.5.6907.0 (Microsoft Office Communicator 2007 R2)",
    "UCCP/2.0.6362.111 OC/2.0.6362.111",
    "CPE/4.0.7577.4363 OCPhone/4.0.7577.4363 (Microsoft Lync 2010 Phone Edition)",
    "AOC/4.0.7577.0",
    "MC/14.0.0 (Microsoft Lync for Mac 2011)",
    "RTCC/5.0.0.0 UCWA/5.0.0.0 iPhoneLync/5.0.0.0 (iPhone iOS 7.0)",
    "RTCC/5.0.0.0 UCWA/5.0.0.0 iPadLync/5.0.0.0 (iPad iOS 7.0)",
    "RTCC/5.0.0.0 UCWA/5.0.0.0 WPLync/5.0.0.0 (Windows Phone 8.0)",
    "RTCC/5.0.0.0 UCWA/5.0.0.0 AndroidLync/5.0.0.0 (Android 4.4)",
    "RTCC/7.0.0.0 UCWA/7.0.0.0 AndroidLync/6.25.0.27 (Nexus 5 Android 6.0.1)",
    "RTCC/4.0.0.0 McxService/4.0.0.0 iPhoneLync/4.0.0.0",
    "RTCC/4.0.0.0 McxService/4.0.0.0 AndroidLync/4.0.0.0",
    "RTCC/3.5.0.0 MCXService/3.5.0.0 communicator.NOKIAS60R2.JVP.EN_US/1.0.6875.0",
    "RTCC/5.0.0.0 LWA/5.0.0.0",
    "RTCC/5.0.0.0 Response_Group_Service/5.0.0.0",
    "RTCC/5.0.0.0 Response_Group_Service Announcement_Service",
    "RTCC/5.0.0.0 MediationServer",
    "RTCC/5.0.0.0 MSExchangeUM/15.01.0231.021",
    "RTCC/5.0.0.0 Conferencing_Attendant_1.0",
    "RTCC/5.0.0.0 Call_Park_Service_1.0",
    "RTCC/4.0.0.0 Inbound Routing/4.0.0.0",
    "RTCC/5.0.0.0 CoreServer",
    "RTC/3.0",
    "RTC/5.0",
    "RTC/6.0",
];

/// The third-party mobile softphones of the corpus (the shipped catalog:
/// category mobile, support unsupported), and the corpus's other products
/// that share a product token with them (Bria desktop and X-Lite: `Bria`,
/// `release`, `stamp`), so that an allow of such a token is seen to take
/// both.
const THIRD_PARTY: [&str; 10] = [
    "LinphoneiOS/4.3.0 (Bob's iPhone) LinphoneSDK/4.4.0",
    "demo_simulator.64bits_iOS11.2/3.16.5-46-324141 (belle-sip/1.6.3)",
    "Bria iOS release 3.9.5 stamp 38501.38502",
    "Bria iOS 3.1.1",
    "CSipSimple_mako-22/r2457",
    "Bria 3 release 3.5.5 stamp 71243",
    "X-Lite release 5.7.1 stamp 100933",
    "X-Lite release 4.9.8 stamp 84253",
    "X-Lite 4 release 4.0 stamp 58832",
    "X-Lite release 1104o stamp 56125",
];

/// Every known User-Agent.
pub(super) fn known_user_agents() -> impl Iterator<Item = &'static str> {
    MICROSOFT.into_iter().chain(THIRD_PARTY)
}

/// The roles as a TOML array: `["caller", "informal-agent"]`.
pub(super) fn roles_text(roles: &[Role]) -> String {
    let quoted: Vec<String> = roles.iter().map(|r| format!("{:?}", r.as_str())).collect();
    format!("[{}]", quoted.join(", "))
}

/// A known User-Agent and what the shipped catalog says of it.
#[derive(Debug, Clone)]
pub(super) struct Known {
    /// The User-Agent.
    pub(super) user_agent: &'static str,
    /// The shipped client's display name.
    pub(super) name: String,
    /// The shipped client's Response Group support.
    pub(super) support: Support,
    /// The shipped client's Response Group roles.
    pub(super) roles: Vec<Role>,
    /// Whether an imported rule before the current one decides it.
    pub(super) taken: bool,
}

impl Known {
    /// `Lync 2013 ("UCCAPI/15.0.4481.1000 ...", support supported)`.
    pub(super) fn describe(&self) -> String {
        format!(
            "{} ({:?}, support {})",
            self.name, self.user_agent, self.support
        )
    }
}

/// The known User-Agents as `shipped` classifies them.
pub(super) fn known_clients(shipped: &Catalog) -> Vec<Known> {
    known_user_agents()
        .map(|user_agent| {
            let c = shipped.classify(Some(user_agent.as_bytes()));
            Known {
                user_agent,
                name: c.client.name.clone(),
                support: c.client.support,
                roles: c.client.roles.clone(),
                taken: false,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::support::{code_support, CodeSupport, ATTENDANT_COMMENT, LYNC_2010_MAJOR};
    use super::*;
    use crate::classify::{tokenize, Item, Version};
    use crate::config::SHIPPED_CATALOG;

    fn shipped() -> &'static Catalog {
        static SHIPPED: std::sync::LazyLock<Catalog> =
            std::sync::LazyLock::new(|| Catalog::from_toml_str(SHIPPED_CATALOG).unwrap());
        &SHIPPED
    }

    /// The User-Agents of the corpus tables (first column).
    fn corpus() -> Vec<&'static str> {
        [
            include_str!("../../tests/corpus/user-agents.tsv"),
            include_str!("../../tests/corpus/user-agents-extra.tsv"),
        ]
        .into_iter()
        .flat_map(|table| table.lines().skip(1))
        .filter_map(|l| l.split('\t').next())
        .filter(|ua| !ua.is_empty())
        .collect()
    }

    /// The product names of a User-Agent, lowercase.
    fn products(user_agent: &str) -> Vec<String> {
        tokenize(user_agent.as_bytes())
            .filter_map(|item| match item {
                Item::Product { name, .. } => Some(String::from_utf8_lossy(name).to_lowercase()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn the_third_party_rows_are_the_corpus_mobile_softphones_and_their_token_sharers() {
        let shipped = shipped();
        let mobile: Vec<&str> = corpus()
            .into_iter()
            .filter(|ua| !MICROSOFT.contains(ua))
            .filter(|ua| {
                let c = shipped.classify(Some(ua.as_bytes()));
                c.client.category.as_str() == "mobile"
            })
            .collect();
        for ua in &mobile {
            assert!(THIRD_PARTY.contains(ua), "{ua} is not a known User-Agent");
        }
        // An allow of a token a mobile softphone shares with another
        // product takes both: the other is known too.
        let tokens: Vec<String> = mobile.iter().flat_map(|ua| products(ua)).collect();
        for ua in corpus() {
            if products(ua).iter().any(|p| tokens.contains(p)) {
                assert!(
                    known_user_agents().any(|k| k == ua),
                    "{ua} shares a product token with a mobile softphone and is not known"
                );
            }
        }
        for known in known_clients(shipped) {
            if THIRD_PARTY.contains(&known.user_agent) {
                assert!(
                    matches!(known.support, Support::Unsupported | Support::ThirdParty),
                    "{}",
                    known.describe()
                );
            }
        }
    }

    #[test]
    fn the_shipped_catalog_knows_every_known_user_agent_and_the_corpus_has_it() {
        let rows = corpus();
        for known in known_clients(shipped()) {
            assert!(
                !matches!(known.support, Support::Unknown),
                "{}",
                known.describe()
            );
            let design_example = known.user_agent.starts_with("UCCP/")
                || known.user_agent.contains("AndroidLync/6.25");
            assert!(
                design_example || rows.contains(&known.user_agent),
                "{} is not a corpus row",
                known.user_agent
            );
        }
    }

    /// What `code_support` says of a User-Agent for one of its tokens.
    fn says(support: CodeSupport, version: Option<&[u8]>, ua: &str) -> Option<bool> {
        match support {
            CodeSupport::NotKnown => None,
            CodeSupport::Supported { .. } => Some(true),
            CodeSupport::Unsupported { .. } => Some(false),
            CodeSupport::FromLync2010 => {
                let major = version.and_then(Version::parse).map(|v| v.parts()[0]);
                Some(major.is_some_and(|m| m >= LYNC_2010_MAJOR) || ua.contains(ATTENDANT_COMMENT))
            }
        }
    }

    #[test]
    fn the_code_table_agrees_with_the_shipped_catalog_on_every_known_client() {
        // For every product token of a known client client that the table
        // knows, the table's answer is the shipped catalog's (servers are
        // kept apart by the import, see translate).
        for known in known_clients(shipped()) {
            for item in tokenize(known.user_agent.as_bytes()) {
                let Item::Product { name, version } = item else {
                    continue;
                };
                let code = std::str::from_utf8(name).unwrap();
                let Some(supported) = says(code_support(code), version, known.user_agent) else {
                    continue;
                };
                if known.support == Support::Service {
                    continue;
                }
                assert_eq!(
                    supported,
                    known.support == Support::Supported,
                    "{code} in {}",
                    known.describe()
                );
            }
        }
    }
}
