//! A decision record read without copying: [`RecordView`] has the fields of
//! [`DecisionRecord`] with the same names, types and serde rules, but its
//! strings borrow from the line (copied only when the JSON escapes
//! something). A line is a record for the report exactly when it is one for
//! [`DecisionRecord`] (the tests below hold the two to that): any line with
//! the contract's fields ([`CONTRACT_FIELDS`]); `client_rule` (empty),
//! `would_reject` (`false`) and `generation` (0) are defaulted when
//! missing, and unknown fields are ignored.
//!
//! [`CONTRACT_FIELDS`]: crate::observe::decision_log::CONTRACT_FIELDS

use std::borrow::Cow;
use std::fmt;
use std::net::SocketAddr;

use jiff::Timestamp;
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use crate::classify::{Category, Support};
use crate::observe::decision_log::{counted_once, DecisionKind, Leg};
use crate::observe::DecisionRecord;
use crate::policy::{Action, Mode, SessionRole};
use crate::transport::Transport;

/// One decision record as read from a log line; see [`DecisionRecord`] for
/// what each field means.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RecordView<'a> {
    /// When the decision was made (RFC 3339, read as `run` writes it).
    #[serde(deserialize_with = "rfc3339")]
    pub ts: Timestamp,
    /// `udp` or `tcp`.
    pub transport: Transport,
    /// Source `IP:port`.
    pub source: SocketAddr,
    /// The listener it arrived at (`None` when missing).
    #[serde(default)]
    pub local: Option<SocketAddr>,
    /// Which leg (`None` when missing: see [`RecordView::leg`]).
    #[serde(default)]
    pub leg: Option<Leg>,
    /// Request method.
    #[serde(borrow)]
    pub method: Text<'a>,
    /// Call-ID.
    #[serde(borrow)]
    pub call_id: Text<'a>,
    /// From URI.
    #[serde(borrow)]
    pub from: Text<'a>,
    /// To URI.
    #[serde(borrow)]
    pub to: Text<'a>,
    /// Request-URI.
    #[serde(borrow)]
    pub request_uri: Text<'a>,
    /// User-Agent as sent (`None` when missing).
    #[serde(borrow)]
    pub user_agent: Option<Text<'a>>,
    /// Catalog id of the client the decision is about.
    #[serde(borrow)]
    pub client: Text<'a>,
    /// Catalog id of the request's own User-Agent (empty when missing).
    #[serde(borrow, default)]
    pub sender_client: Text<'a>,
    /// The client's category.
    pub category: Category,
    /// The client's Response Group support.
    pub support: Support,
    /// Session role.
    pub role: SessionRole,
    /// Policy decision or protocol answer (`None` when missing: see
    /// [`RecordView::kind`]).
    #[serde(default)]
    pub kind: Option<DecisionKind>,
    /// What the filter did.
    pub action: Action,
    /// Policy rule that decided.
    #[serde(borrow)]
    pub rule: Text<'a>,
    /// Catalog rule that classified the client (empty when missing).
    #[serde(borrow, default)]
    pub client_rule: Text<'a>,
    /// Status code sent by the filter, if any.
    pub status: Option<u16>,
    /// `enforce` or `monitor`.
    pub mode: Mode,
    /// Monitor mode relayed a message enforce mode would have rejected
    /// (`false` when missing).
    #[serde(default)]
    pub would_reject: bool,
    /// Runtime configuration generation (0 when absent).
    #[serde(default)]
    pub generation: u64,
    /// A registrar-leg request that came through sipadmit from a client
    /// before (`false` when missing).
    #[serde(default)]
    pub spiral: bool,
    /// A retry with credentials after a `401` or `407` (`false` when
    /// missing).
    #[serde(default)]
    pub after_challenge: bool,
    /// A de-REGISTER (`false` when missing).
    #[serde(default)]
    pub unregister: bool,
    /// What the decision sent never reached its peer (`false` when missing).
    #[serde(default)]
    pub undelivered: bool,
}

impl<'a> RecordView<'a> {
    /// Reads one log line (without its line break). `None` when the line is
    /// not a decision record.
    pub fn parse(line: &'a [u8]) -> Option<Self> {
        serde_json::from_slice(line).ok()
    }

    /// The leg, defaulted for a line without it ([`Leg::default_for`]).
    pub fn leg(&self) -> Leg {
        self.leg.unwrap_or_else(|| Leg::default_for(self.role))
    }

    /// The kind, read from the rule for a line without it.
    pub fn kind(&self) -> DecisionKind {
        self.kind
            .unwrap_or_else(|| DecisionKind::of_rule(self.rule.as_str()))
    }

    /// Whether this policy record counts once per call and client
    /// ([`counted_once`]).
    pub fn counted_once(&self) -> bool {
        counted_once(self.leg(), self.role, self.spiral, self.after_challenge)
    }

    /// The owned [`DecisionRecord`] with the same values.
    pub fn to_record(&self) -> DecisionRecord {
        DecisionRecord {
            ts: self.ts,
            transport: self.transport,
            source: self.source,
            local: self.local,
            leg: self.leg,
            method: self.method.to_string(),
            call_id: self.call_id.to_string(),
            from: self.from.to_string(),
            to: self.to.to_string(),
            request_uri: self.request_uri.to_string(),
            user_agent: self.user_agent.as_ref().map(Text::to_string),
            client: self.client.to_string(),
            sender_client: self.sender_client.to_string(),
            category: self.category,
            support: self.support,
            role: self.role,
            kind: self.kind,
            action: self.action,
            rule: Cow::Owned(self.rule.to_string()),
            client_rule: self.client_rule.to_string(),
            status: self.status,
            mode: self.mode,
            would_reject: self.would_reject,
            generation: self.generation,
            spiral: self.spiral,
            after_challenge: self.after_challenge,
            unregister: self.unregister,
            undelivered: self.undelivered,
        }
    }
}

/// A JSON string of a record: borrowed from the line unless it had escapes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Text<'a>(pub Cow<'a, str>);

impl Default for Text<'_> {
    /// Empty (borrowing nothing).
    fn default() -> Self {
        Text(Cow::Borrowed(""))
    }
}

impl Text<'_> {
    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Text<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor;
        impl<'de> Visitor<'de> for TextVisitor {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(TextVisitor)
    }
}

/// `ts` read the way [`DecisionRecord`] reads it: a string parsed as an
/// RFC 3339 timestamp.
fn rfc3339<'de, D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
    let text = Text::deserialize(d)?;
    text.as_str().parse().map_err(de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::decision_log::CONTRACT_FIELDS;

    fn record() -> DecisionRecord {
        DecisionRecord {
            // Fixed: two calls must give equal records.
            ts: "2026-11-27T00:57:40.653Z".parse().unwrap(),
            transport: Transport::Tcp,
            source: "[::1]:5062".parse().unwrap(),
            local: Some("[::1]:5060".parse().unwrap()),
            leg: Some(Leg::FromClient),
            method: "INVITE".into(),
            call_id: "a84b4c76e66710@pc33".into(),
            from: "sip:bob@contoso.com".into(),
            to: "sip:helpdesk@contoso.com".into(),
            request_uri: "sip:helpdesk@contoso.com".into(),
            user_agent: Some("RTCC/7.0.0.0 UCWA/7.0.0.0 AndroidLync/6.25.0.27 (Nexus 5)".into()),
            client: "lync-mobile".into(),
            sender_client: "lync-mobile".into(),
            category: Category::Mobile,
            support: Support::Unsupported,
            role: SessionRole::Caller,
            kind: Some(DecisionKind::Policy),
            action: Action::Reject,
            rule: Cow::Borrowed("caller.unsupported"),
            client_rule: "lync-mobile#4".into(),
            status: Some(403),
            mode: Mode::Enforce,
            would_reject: false,
            generation: 3,
            spiral: false,
            after_challenge: false,
            unregister: false,
            undelivered: false,
        }
    }

    fn line(r: &DecisionRecord) -> String {
        serde_json::to_string(r).unwrap()
    }

    #[test]
    fn reads_what_the_writer_writes() {
        let mut variants = vec![record()];
        let mut r = record();
        r.user_agent = None;
        r.status = None;
        r.transport = Transport::Udp;
        r.source = "192.0.2.7:5060".parse().unwrap();
        r.role = SessionRole::AgentOffer;
        r.action = Action::Flag;
        r.mode = Mode::Monitor;
        r.would_reject = true;
        variants.push(r);
        let mut r = record();
        // Escapes: quotes, backslashes, control characters, non-ASCII.
        r.user_agent = Some("Odd \"UA\" \\ \u{1}\t<b>é中".into());
        r.from = "sip:\"x\"@example.com".into();
        variants.push(r);
        // The registrar's leg of a call relayed from a client; a protocol
        // answer; a de-REGISTER.
        let mut r = record();
        r.leg = Some(Leg::FromRegistrar);
        r.spiral = true;
        r.sender_client = "response-group-service".into();
        variants.push(r);
        let mut r = record();
        r.kind = Some(DecisionKind::Protocol);
        r.rule = Cow::Borrowed("proxy.malformed");
        r.status = Some(400);
        variants.push(r);
        let mut r = record();
        r.method = "REGISTER".into();
        r.unregister = true;
        variants.push(r);
        // An answer the client's closed connection never got.
        let mut r = record();
        r.undelivered = true;
        variants.push(r);
        for r in variants {
            let text = line(&r);
            let view = RecordView::parse(text.as_bytes()).expect("a record");
            assert_eq!(view.to_record(), r, "{text}");
        }
    }

    #[test]
    fn strings_without_escapes_are_borrowed() {
        let text = line(&record());
        let view = RecordView::parse(text.as_bytes()).unwrap();
        assert!(matches!(view.client.0, Cow::Borrowed(_)));
        assert!(matches!(view.user_agent.unwrap().0, Cow::Borrowed(_)));
    }

    type Object = serde_json::Map<String, serde_json::Value>;

    /// The fields of `r`'s line that the interface contract names, and no
    /// others (an older version's line, or one a log shipper trimmed).
    fn contract_only(r: &DecisionRecord) -> Object {
        let mut object: Object = serde_json::from_str(&line(r)).unwrap();
        object.retain(|key, _| CONTRACT_FIELDS.contains(&key.as_str()));
        assert_eq!(object.len(), CONTRACT_FIELDS.len(), "{object:?}");
        object
    }

    /// Both readers' verdict on `text`, which must agree.
    fn read(text: &str) -> Option<DecisionRecord> {
        let owned = serde_json::from_str::<DecisionRecord>(text).ok();
        let view = RecordView::parse(text.as_bytes());
        assert_eq!(
            view.as_ref().map(RecordView::to_record),
            owned,
            "line read differently: {text}"
        );
        owned
    }

    /// `r` as read from a line without the fields the contract leaves
    /// out: those defaulted.
    fn defaulted(r: &DecisionRecord) -> DecisionRecord {
        DecisionRecord {
            local: None,
            leg: None,
            sender_client: String::new(),
            kind: None,
            client_rule: String::new(),
            would_reject: false,
            generation: 0,
            spiral: false,
            unregister: false,
            ..r.clone()
        }
    }

    /// A line without `leg` (an older log): an agent offer's leg is the
    /// registrar's, any other record's the client's; without `kind`, the
    /// rule says: `proxy.*`, `rate_limit.*`, `ban.*` are protocol answers.
    #[test]
    fn leg_and_kind_of_a_line_without_them_are_read_from_role_and_rule() {
        for (role, rule, leg, kind) in [
            (
                SessionRole::Caller,
                "caller.unsupported",
                Leg::FromClient,
                DecisionKind::Policy,
            ),
            (
                SessionRole::AgentOffer,
                "agent-offer.unsupported",
                Leg::FromRegistrar,
                DecisionKind::Policy,
            ),
            (
                SessionRole::None,
                "proxy.malformed",
                Leg::FromClient,
                DecisionKind::Protocol,
            ),
            (
                SessionRole::None,
                "rate_limit.requests",
                Leg::FromClient,
                DecisionKind::Protocol,
            ),
            (
                SessionRole::None,
                "ban.scanner",
                Leg::FromClient,
                DecisionKind::Protocol,
            ),
            (
                SessionRole::None,
                "scanner",
                Leg::FromClient,
                DecisionKind::Policy,
            ),
        ] {
            let mut r = record();
            r.role = role;
            r.rule = Cow::Borrowed(rule);
            let text = serde_json::Value::Object(contract_only(&r)).to_string();
            let view = RecordView::parse(text.as_bytes()).unwrap();
            let owned = read(&text).unwrap();
            assert_eq!((view.leg(), view.kind()), (leg, kind), "{rule}");
            assert_eq!((owned.leg(), owned.kind()), (leg, kind), "{rule}");
            // Old logs count every record: nothing is a spiral.
            assert!(view.counted_once() && owned.counted_once());
        }
        // Written: leg and kind as they are, spiral, unregister and
        // undelivered only when true.
        let object: Object = serde_json::from_str(&line(&record())).unwrap();
        assert_eq!(object["leg"], "from_client");
        assert_eq!(object["kind"], "policy");
        assert_eq!(object["sender_client"], "lync-mobile");
        for only_when_true in ["spiral", "unregister", "undelivered"] {
            assert!(!object.contains_key(only_when_true), "{only_when_true}");
        }
    }

    #[test]
    fn a_line_with_exactly_the_contract_fields_is_a_record() {
        let mut monitored = record();
        monitored.mode = Mode::Monitor;
        monitored.action = Action::Flag;
        monitored.would_reject = true;
        // `user_agent` and `status` written as `null`.
        let mut nulls = record();
        nulls.user_agent = None;
        nulls.status = None;
        for r in [record(), monitored, nulls] {
            let object = contract_only(&r);
            let text = serde_json::Value::Object(object).to_string();
            assert_eq!(read(&text), Some(defaulted(&r)), "{text}");
            let view = RecordView::parse(text.as_bytes()).unwrap();
            assert_eq!(view.client_rule.as_str(), "");
            assert!(!view.would_reject);
            assert_eq!(view.generation, 0);
        }
    }

    #[test]
    fn a_line_missing_a_contract_field_is_not_a_record() {
        for key in CONTRACT_FIELDS {
            let mut object = contract_only(&record());
            object.remove(key);
            let text = serde_json::Value::Object(object).to_string();
            match key {
                // `Option` fields: serde reads a missing one as `null`,
                // which they may be (README, decision record fields).
                "user_agent" | "status" => assert!(read(&text).is_some(), "{text}"),
                _ => assert_eq!(read(&text), None, "{key}: {text}"),
            }
        }
    }

    #[test]
    fn unknown_fields_are_ignored() {
        // One record (its `ts` is the clock's: two calls may differ).
        let record = record();
        let record = || record.clone();
        let mut object = contract_only(&record());
        // What a log shipper adds, and a field of a later version.
        object.insert(
            "@timestamp".into(),
            serde_json::json!("2026-11-27T00:57:41Z"),
        );
        object.insert("host".into(), serde_json::json!({"name": "edge-1"}));
        object.insert("tags".into(), serde_json::json!(["sip", null, 3]));
        object.insert("client_rule_v2".into(), serde_json::Value::Null);
        let text = serde_json::Value::Object(object).to_string();
        assert_eq!(read(&text), Some(defaulted(&record())), "{text}");
        // Added to a full line, too: nothing else changes.
        let mut full: Object = serde_json::from_str(&line(&record())).unwrap();
        full.insert("host".into(), serde_json::json!("edge-1"));
        let text = serde_json::Value::Object(full).to_string();
        assert_eq!(read(&text), Some(record()), "{text}");
    }

    /// Every mutation of a valid line (a full one, and one with only the
    /// contract's fields) is accepted by both readers or by neither: the
    /// report reads exactly what `DecisionRecord` reads.
    #[test]
    fn accepts_exactly_what_decision_record_accepts() {
        let full: Object = serde_json::from_str(&line(&record())).unwrap();
        let mut lines = vec![
            String::new(),
            "not json".to_owned(),
            "[]".to_owned(),
            "{}".to_owned(),
            line(&record()).replace('}', ""),
            format!("{} trailing", line(&record())),
            format!("{}\r", line(&record())),
            line(&record()).replacen("{", "{\"ts\":\"2026-01-01T00:00:00Z\",", 1),
        ];
        let replacements = [
            serde_json::Value::Null,
            serde_json::json!(42),
            serde_json::json!("bogus"),
            serde_json::json!(""),
            serde_json::json!(true),
            serde_json::json!(["x"]),
            serde_json::json!("2026-11-27T00:57:40+01:00"),
            serde_json::json!("10.0.0.1"),
        ];
        for base in [full.clone(), contract_only(&record())] {
            for key in full.keys() {
                let mut without = base.clone();
                without.remove(key);
                lines.push(serde_json::Value::Object(without).to_string());
                for value in &replacements {
                    let mut changed = base.clone();
                    changed.insert(key.clone(), value.clone());
                    lines.push(serde_json::Value::Object(changed).to_string());
                }
            }
            let mut extra = base.clone();
            extra.insert("new_field".into(), serde_json::json!({"a": 1}));
            lines.push(serde_json::Value::Object(extra).to_string());
        }
        let mut accepted = 0;
        for l in &lines {
            accepted += usize::from(read(l).is_some());
        }
        // Both outcomes occur, so the comparison means something.
        assert!(accepted > 5 && accepted < lines.len() - 5, "{accepted}");
    }
}
