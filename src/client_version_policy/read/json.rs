//! JSON read as written: an object keeps every member, in file order, a
//! property given twice included. serde_json's `Map` keeps the last of two
//! equal keys silently, and a property given in two cases (`Action` and
//! `action`, which PowerShell takes for one) as two; the reader compares
//! property names case-insensitively and must see every copy to refuse
//! them.

use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// A JSON value whose objects keep every member.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Json {
    /// `null`, a boolean, a number or a string.
    Scalar(Value),
    /// An array.
    Array(Vec<Json>),
    /// An object: its members in file order, duplicates kept.
    Object(Vec<(String, Json)>),
}

impl Json {
    /// As a [`Value`], for a property's value. An object inside it keeps
    /// the last of equal keys, as serde_json does: the reader looks into
    /// no object below a rule's properties.
    pub(super) fn to_value(&self) -> Value {
        match self {
            Self::Scalar(v) => v.clone(),
            Self::Array(items) => Value::Array(items.iter().map(Self::to_value).collect()),
            Self::Object(members) => Value::Object(
                members
                    .iter()
                    .map(|(k, v)| (k.clone(), v.to_value()))
                    .collect::<Map<String, Value>>(),
            ),
        }
    }

    /// `an array`, `a string`, ... as messages name it.
    pub(super) fn kind(&self) -> &'static str {
        match self {
            Self::Scalar(v) => super::json_kind(v),
            Self::Array(_) => "an array",
            Self::Object(_) => "an object",
        }
    }
}

/// The members of an object whose name is `name`, compared
/// case-insensitively as PowerShell does: none, one, or every copy when it
/// is given more than once.
pub(super) fn lookup<'m, V>(members: &'m [(String, V)], name: &str) -> Lookup<'m, V> {
    let mut found = members.iter().filter(|(k, _)| k.eq_ignore_ascii_case(name));
    match (found.next(), found.next()) {
        (None, _) => Lookup::Absent,
        (Some((_, v)), None) => Lookup::Once(v),
        (Some(first), Some(second)) => {
            Lookup::Repeated([first, second].into_iter().chain(found).collect())
        }
    }
}

/// What [`lookup`] found.
pub(super) enum Lookup<'m, V> {
    /// No member of that name.
    Absent,
    /// One member: its value.
    Once(&'m V),
    /// Several: every one, name as written and value, in file order.
    Repeated(Vec<&'m (String, V)>),
}

impl<V> Lookup<'_, V> {
    /// Whether the object has no member of that name.
    pub(super) fn is_absent(&self) -> bool {
        matches!(self, Self::Absent)
    }
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, b: bool) -> Result<Json, E> {
        Ok(Json::Scalar(Value::Bool(b)))
    }

    fn visit_i64<E>(self, n: i64) -> Result<Json, E> {
        Ok(Json::Scalar(Value::Number(n.into())))
    }

    fn visit_u64<E>(self, n: u64) -> Result<Json, E> {
        Ok(Json::Scalar(Value::Number(n.into())))
    }

    fn visit_f64<E>(self, n: f64) -> Result<Json, E> {
        Ok(Json::Scalar(
            Number::from_f64(n).map_or(Value::Null, Value::Number),
        ))
    }

    fn visit_str<E>(self, s: &str) -> Result<Json, E> {
        Ok(Json::Scalar(Value::String(s.to_owned())))
    }

    fn visit_string<E>(self, s: String) -> Result<Json, E> {
        Ok(Json::Scalar(Value::String(s)))
    }

    fn visit_unit<E>(self) -> Result<Json, E> {
        Ok(Json::Scalar(Value::Null))
    }

    fn visit_none<E>(self) -> Result<Json, E> {
        Ok(Json::Scalar(Value::Null))
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Json, D::Error> {
        Json::deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        let mut members = Vec::new();
        while let Some(member) = map.next_entry::<String, Json>()? {
            members.push(member);
        }
        Ok(Json::Object(members))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_keep_every_member_in_file_order() {
        let json: Json =
            serde_json::from_str(r#"{"a": 1, "A": [true, null, 1.5], "a": {"b": "x", "b": "y"}}"#)
                .unwrap();
        let Json::Object(members) = &json else {
            panic!("{json:?}");
        };
        let keys: Vec<&str> = members.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["a", "A", "a"]);
        assert_eq!(
            members[1].1.to_value(),
            serde_json::json!([true, null, 1.5])
        );
        // Below the members, the last of equal keys, as serde_json keeps it.
        assert_eq!(members[2].1.to_value(), serde_json::json!({"b": "y"}));
        let Lookup::Repeated(copies) = lookup(members, "a") else {
            panic!("not repeated");
        };
        assert_eq!(copies.len(), 3);
        assert!(lookup(members, "b").is_absent());
        assert!(matches!(lookup(&members[..1], "A"), Lookup::Once(_)));
    }

    #[test]
    fn numbers_keep_their_type() {
        let json: Json = serde_json::from_str("[-1, 18446744073709551615, 2.0]").unwrap();
        assert_eq!(
            json.to_value(),
            serde_json::json!([-1, 18_446_744_073_709_551_615_u64, 2.0])
        );
    }
}
