//! The canonical JSON form of a body: what it says, whatever its spacing and key
//! order. Two bodies are the same event when their canonical forms are equal.
//!
//! The form: object keys sorted (by their UTF-8 bytes), no insignificant
//! whitespace, strings and numbers written as serde_json writes them (so `1.0` and
//! `1` differ, as they do as JSON values). The crate enables serde_json's
//! `preserve_order`, so keys are sorted here explicitly.

use serde_json::Value;

/// The canonical form of `value`.
pub fn to_vec(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    write(&mut out, value);
    out
}

/// The JSON text of a body: without a leading UTF-8 byte order mark, which RFC 8259
/// (section 8.1) lets a parser ignore. Everywhere a stored body is parsed goes
/// through this; signatures and the stored body stay over the bytes received.
pub fn json_text(body: &[u8]) -> &[u8] {
    body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body)
}

/// The canonical form of a JSON body, `None` if it is not JSON.
pub fn of_body(body: &[u8]) -> Option<Vec<u8>> {
    serde_json::from_slice::<Value>(json_text(body))
        .ok()
        .map(|value| to_vec(&value))
}

/// Whether two bodies are the same JSON value (bodies that are not JSON never are).
pub fn same_value(a: &[u8], b: &[u8]) -> bool {
    match (of_body(a), of_body(b)) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

fn write(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (i, (key, value)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_scalar(out, key);
                out.push(b':');
                write(out, value);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write(out, item);
            }
            out.push(b']');
        }
        scalar => write_scalar(out, scalar),
    }
}

fn write_scalar(out: &mut Vec<u8>, value: &impl serde::Serialize) {
    serde_json::to_writer(&mut *out, value).expect("writing JSON to a Vec cannot fail");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spacing_and_key_order_do_not_matter_values_do() {
        let compact = br#"{"id":"a","data":{"b":1,"a":[1,{"y":null,"x":"\u00e9"}]}}"#;
        let pretty = b"{\n  \"data\": { \"a\": [ 1, {\"x\": \"\xc3\xa9\", \"y\": null} ], \"b\": 1 },\n  \"id\": \"a\"\n}";
        assert!(same_value(compact, pretty));
        assert_eq!(
            of_body(pretty).unwrap(),
            "{\"data\":{\"a\":[1,{\"x\":\"é\",\"y\":null}],\"b\":1},\"id\":\"a\"}".as_bytes()
        );
        assert!(!same_value(
            compact,
            br#"{"id":"a","data":{"b":2,"a":[1,{"y":null,"x":"\u00e9"}]}}"#
        ));
        assert!(!same_value(br#"{"n":1}"#, br#"{"n":1.0}"#));
        assert!(!same_value(b"not json", b"not json"));
    }
}
