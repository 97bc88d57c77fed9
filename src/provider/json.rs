//! Parses a body into a JSON object in one pass, noting repeated keys on the way.
//!
//! serde_json keeps the last of two equal keys without a word. The signature may
//! cover only one of them (DreamClass signs the `id` that was read, the last), while a
//! consumer reading the raw body may trust the first: a repeated key makes a body
//! ambiguous. This visitor builds the same `Value` serde_json would (the last value
//! wins) and reports the first repeated key at the top level and the first one
//! anywhere deeper, without a second parse.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// A parsed body and the repeated keys found in it.
#[derive(Debug, Default)]
pub struct Checked {
    pub value: Value,
    /// The first key repeated in the top-level object.
    pub top_level_repeat: Option<String>,
    /// The path of the first key repeated inside a nested value (`data.user.email`,
    /// `data.lineitems[0].id`).
    pub nested_repeat: Option<String>,
}

/// Parses `body` like `serde_json::from_slice::<Value>`, noting repeated keys.
pub fn parse(body: &[u8]) -> Result<Checked, serde_json::Error> {
    let mut found = Found::default();
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = Seed {
        found: &mut found,
        depth: 0,
    }
    .deserialize(&mut de)?;
    de.end()?;
    Ok(Checked {
        value,
        top_level_repeat: found.top,
        nested_repeat: found.nested.map(|segments| render(&segments)),
    })
}

#[derive(Default)]
struct Found {
    top: Option<String>,
    /// Innermost segment first: filled in as the repeat's parents return.
    nested: Option<Vec<Segment>>,
}

enum Segment {
    Key(String),
    Index(usize),
}

fn render(reversed: &[Segment]) -> String {
    let mut path = String::new();
    for segment in reversed.iter().rev() {
        match segment {
            Segment::Key(key) => {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
            }
            Segment::Index(i) => path.push_str(&format!("[{i}]")),
        }
    }
    path
}

struct Seed<'a> {
    found: &'a mut Found,
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for Seed<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Seed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any valid JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        self.deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        loop {
            let before = self.found.nested.is_some();
            let Some(item) = seq.next_element_seed(Seed {
                found: self.found,
                depth: self.depth + 1,
            })?
            else {
                break;
            };
            if !before && let Some(path) = self.found.nested.as_mut() {
                path.push(Segment::Index(items.len()));
            }
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        let mut map = Map::new();
        while let Some(key) = access.next_key::<String>()? {
            let before = self.found.nested.is_some();
            let value = access.next_value_seed(Seed {
                found: self.found,
                depth: self.depth + 1,
            })?;
            if !before && let Some(path) = self.found.nested.as_mut() {
                // The repeat was found inside this value: name its key on the way out.
                path.push(Segment::Key(key.clone()));
            }
            match map.entry(key) {
                serde_json::map::Entry::Vacant(entry) => {
                    entry.insert(value);
                }
                serde_json::map::Entry::Occupied(mut entry) => {
                    if self.depth == 0 {
                        self.found.top.get_or_insert_with(|| entry.key().clone());
                    } else if self.found.nested.is_none() {
                        self.found.nested = Some(vec![Segment::Key(entry.key().clone())]);
                    }
                    // The last one wins, as in serde_json.
                    entry.insert(value);
                }
            }
        }
        Ok(Value::Object(map))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Checked {
        parse(text.as_bytes()).unwrap()
    }

    #[test]
    fn builds_what_serde_json_builds() {
        for text in [
            r#"{"a":1,"b":[1,2.5,-3,"x",null,true,{"c":{}}],"d":"é\n","e":18446744073709551615}"#,
            r#"{"a":1,"a":2,"z":{"k":1,"k":[3]}}"#,
            "[1,2]",
            "\"text\"",
            "1e400",
        ] {
            let ours = parse(text.as_bytes()).map(|c| c.value).ok();
            let theirs = serde_json::from_str::<Value>(text).ok();
            assert_eq!(ours, theirs, "{text}");
            if let Some(value) = ours {
                assert_eq!(value.to_string(), theirs.unwrap().to_string());
            }
        }
        assert!(parse(b"{\"a\":1} x").is_err());
        assert!(parse(b"{\"a\":").is_err());
    }

    #[test]
    fn repeats_are_found_with_their_path() {
        let none = check(r#"{"id":"a","data":{"id":1,"user":{"id":2}},"x":[{"id":3},{"id":4}]}"#);
        assert_eq!((none.top_level_repeat, none.nested_repeat), (None, None));

        let top = check(r#"{"id":"a","type":"T","id":"b","data":{"k":1,"k":2}}"#);
        assert_eq!(top.top_level_repeat.as_deref(), Some("id"));
        assert_eq!(top.nested_repeat.as_deref(), Some("data.k"));
        assert_eq!(top.value["id"], "b", "the last one wins");

        let deep = check(r#"{"data":{"lineitems":[{"id":1},{"id":2,"price":1,"price":2}]}}"#);
        assert_eq!(deep.top_level_repeat, None);
        assert_eq!(
            deep.nested_repeat.as_deref(),
            Some("data.lineitems[1].price")
        );

        let first = check(r#"{"data":{"a":{"x":1,"x":2},"b":1,"b":2}}"#);
        assert_eq!(
            first.nested_repeat.as_deref(),
            Some("data.a.x"),
            "the first"
        );
        let nested_array = check(r#"{"data":[[{"q":1,"q":1}]]}"#);
        assert_eq!(nested_array.nested_repeat.as_deref(), Some("data[0][0].q"));
    }
}
