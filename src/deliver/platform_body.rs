//! The body a DreamClass subscriber receives: the stored envelope with `signature`
//! recomputed under the subscription's key, written as serde_json writes a
//! [`serde_json::Value`] (compact; keys in stored order, since the crate enables
//! `preserve_order`; a `signature` the body lacks goes last).
//!
//! Prepared once per claimed event ([`PlatformBody::prepare`], cached beside the
//! event in [`crate::store::EventToSend`], which a claim shares between the
//! deliveries of one event to several subscriptions), not once per attempt. In
//! the common shape (valid JSON, no repeated key, nested less than 100 deep; any
//! whitespace) one pass over the bytes writes the body as serde_json would, with a
//! gap where the signature goes, so that an attempt only signs and splices.
//! Strings with escapes and numbers other than plain integers are written by
//! serde_json itself (parsed and written one token at a time), so the result is
//! byte for byte the old route's, [`by_value`]: parse the whole envelope into a
//! `Value`, set `signature`, write it. Anything else (a repeated key, a body that
//! is not an object, or not JSON) takes that old route, per attempt as before.

use std::borrow::Cow;
use std::collections::HashSet;

use serde_json::Value;

use crate::canonical::json_text;

/// Deeper than this, the old route decides (serde_json refuses 128 levels).
const MAX_DEPTH: usize = 100;

/// A stored DreamClass body ready to be signed and sent.
#[derive(Debug)]
pub struct PlatformBody(Prepared);

#[derive(Debug)]
enum Prepared {
    /// The envelope as serde_json writes it, without the signature's string:
    /// `bytes[..at]`, then the signature as a JSON string, then `bytes[at..]`.
    Spliced {
        bytes: Vec<u8>,
        at: usize,
        id: String,
    },
    /// Not in the common shape: the parsed envelope, written per attempt.
    Value(Value),
    /// Not JSON: every attempt fails with this message.
    NotJson(String),
}

impl PlatformBody {
    /// Prepares a stored body (a leading byte order mark is ignored, as when it
    /// was received).
    pub fn prepare(stored_body: &[u8]) -> PlatformBody {
        let text = json_text(stored_body);
        if let Some(spliced) = splice(text) {
            return PlatformBody(spliced);
        }
        PlatformBody(match serde_json::from_slice::<Value>(text) {
            Ok(envelope) => Prepared::Value(envelope),
            Err(e) => Prepared::NotJson(format!("stored body is not JSON: {e}")),
        })
    }

    /// The envelope's `id` (what DreamClass signs); empty when it is not a string.
    pub fn id(&self) -> &str {
        match &self.0 {
            Prepared::Spliced { id, .. } => id,
            Prepared::Value(envelope) => envelope["id"].as_str().unwrap_or_default(),
            Prepared::NotJson(_) => "",
        }
    }

    /// The body with `signature` set to `signature`.
    pub fn with_signature(&self, signature: &str) -> Result<Vec<u8>, String> {
        match &self.0 {
            Prepared::Spliced { bytes, at, .. } => {
                let mut out = Vec::with_capacity(bytes.len() + signature.len() + 2);
                out.extend_from_slice(&bytes[..*at]);
                serde_json::to_writer(&mut out, signature).expect("a string serializes");
                out.extend_from_slice(&bytes[*at..]);
                Ok(out)
            }
            Prepared::Value(envelope) => {
                let mut envelope = envelope.clone();
                envelope["signature"] = Value::String(signature.to_string());
                Ok(serde_json::to_vec(&envelope).expect("a JSON value serializes"))
            }
            Prepared::NotJson(error) => Err(error.clone()),
        }
    }

    /// Whether the one-pass rewrite prepared it (else it takes the old route).
    pub fn is_spliced(&self) -> bool {
        matches!(self.0, Prepared::Spliced { .. })
    }
}

/// The route every DreamClass body took before [`PlatformBody`]: the whole envelope
/// parsed into a `Value`, `signature` set to `sign(id)`, written again. Kept as the
/// reference the tests compare with.
pub fn by_value(stored_body: &[u8], sign: impl FnOnce(&str) -> String) -> Result<Vec<u8>, String> {
    let mut envelope: Value = serde_json::from_slice(json_text(stored_body))
        .map_err(|e| format!("stored body is not JSON: {e}"))?;
    let id = envelope["id"].as_str().unwrap_or_default().to_string();
    envelope["signature"] = Value::String(sign(&id));
    Ok(serde_json::to_vec(&envelope).expect("a JSON value serializes"))
}

/// The one-pass rewrite; `None` when the body is not in the common shape.
fn splice(text: &[u8]) -> Option<Prepared> {
    let text = std::str::from_utf8(text).ok()?;
    let mut w = Writer {
        text,
        pos: 0,
        out: Vec::with_capacity(text.len() + 48),
    };
    w.skip_ws();
    w.expect(b'{')?;
    w.out.push(b'{');
    let mut keys = Keys::default();
    let (mut at, mut id) = (None, String::new());
    w.skip_ws();
    if w.peek()? == b'}' {
        w.pos += 1;
    } else {
        loop {
            w.skip_ws();
            let key = w.string()?;
            let (is_signature, is_id) = (key == "signature", key == "id");
            if !keys.insert(key) {
                return None;
            }
            w.skip_ws();
            w.expect(b':')?;
            w.out.push(b':');
            w.skip_ws();
            if is_signature {
                // Checked like any value, then left out: the gap goes here.
                let gap = w.out.len();
                w.value(1)?;
                w.out.truncate(gap);
                at = Some(gap);
            } else if is_id && w.peek()? == b'"' {
                id = w.string()?.into_owned();
            } else {
                w.value(1)?;
            }
            w.skip_ws();
            match w.next()? {
                b',' => w.out.push(b','),
                b'}' => break,
                _ => return None,
            }
        }
    }
    w.skip_ws();
    if w.pos != text.len() {
        return None;
    }
    let at = match at {
        Some(at) => at,
        None => {
            // Inserted last, as `envelope["signature"] = …` does.
            if keys.len() > 0 {
                w.out.push(b',');
            }
            w.out.extend_from_slice(b"\"signature\":");
            w.out.len()
        }
    };
    w.out.push(b'}');
    Some(Prepared::Spliced {
        bytes: w.out,
        at,
        id,
    })
}

/// The keys of one object, to find a repeated one.
#[derive(Default)]
struct Keys<'a> {
    few: Vec<Cow<'a, str>>,
    many: Option<HashSet<Cow<'a, str>>>,
}

impl<'a> Keys<'a> {
    /// False when `key` was there already.
    fn insert(&mut self, key: Cow<'a, str>) -> bool {
        if let Some(many) = &mut self.many {
            return many.insert(key);
        }
        if self.few.contains(&key) {
            return false;
        }
        self.few.push(key);
        if self.few.len() > 16 {
            self.many = Some(self.few.drain(..).collect());
        }
        true
    }

    fn len(&self) -> usize {
        self.many.as_ref().map_or(self.few.len(), HashSet::len)
    }
}

/// Reads `text` from `pos` and writes what serde_json would write to `out`.
struct Writer<'a> {
    text: &'a str,
    pos: usize,
    out: Vec<u8>,
}

impl<'a> Writer<'a> {
    fn bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    fn peek(&self) -> Option<u8> {
        self.bytes().get(self.pos).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let byte = self.peek()?;
        self.pos += 1;
        Some(byte)
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        (self.next()? == byte).then_some(())
    }

    /// JSON's whitespace (serde_json writes none).
    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\t' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    fn value(&mut self, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        match self.peek()? {
            b'{' => self.object(depth),
            b'[' => self.array(depth),
            b'"' => self.string().map(drop),
            b't' => self.literal("true"),
            b'f' => self.literal("false"),
            b'n' => self.literal("null"),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    fn object(&mut self, depth: usize) -> Option<()> {
        self.pos += 1;
        self.out.push(b'{');
        self.skip_ws();
        if self.peek()? == b'}' {
            self.pos += 1;
            self.out.push(b'}');
            return Some(());
        }
        let mut keys = Keys::default();
        loop {
            self.skip_ws();
            if !keys.insert(self.string()?) {
                return None;
            }
            self.skip_ws();
            self.expect(b':')?;
            self.out.push(b':');
            self.skip_ws();
            self.value(depth + 1)?;
            self.skip_ws();
            match self.next()? {
                b',' => self.out.push(b','),
                b'}' => {
                    self.out.push(b'}');
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    fn array(&mut self, depth: usize) -> Option<()> {
        self.pos += 1;
        self.out.push(b'[');
        self.skip_ws();
        if self.peek()? == b']' {
            self.pos += 1;
            self.out.push(b']');
            return Some(());
        }
        loop {
            self.skip_ws();
            self.value(depth + 1)?;
            self.skip_ws();
            match self.next()? {
                b',' => self.out.push(b','),
                b']' => {
                    self.out.push(b']');
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    fn literal(&mut self, word: &str) -> Option<()> {
        let end = self.pos + word.len();
        if self.bytes().get(self.pos..end)? != word.as_bytes() {
            return None;
        }
        self.pos = end;
        self.out.extend_from_slice(word.as_bytes());
        Some(())
    }

    /// A string at `pos` (its opening quote), written; returns its value. Without
    /// escapes it is copied as it is (serde_json escapes only `"`, `\` and control
    /// characters, which JSON does not allow raw); with escapes, serde_json reads
    /// and writes it.
    fn string(&mut self) -> Option<Cow<'a, str>> {
        let bytes = self.bytes();
        if bytes.get(self.pos) != Some(&b'"') {
            return None;
        }
        let start = self.pos;
        let mut i = start + 1;
        let mut escaped = false;
        loop {
            match *bytes.get(i)? {
                b'"' => break,
                b'\\' => {
                    escaped = true;
                    i += 2;
                }
                0..=0x1F => return None,
                _ => i += 1,
            }
        }
        let end = i + 1;
        self.pos = end;
        if !escaped {
            self.out.extend_from_slice(&bytes[start..end]);
            return Some(Cow::Borrowed(&self.text[start + 1..i]));
        }
        let value: String = serde_json::from_str(&self.text[start..end]).ok()?;
        serde_json::to_writer(&mut self.out, &value).ok()?;
        Some(Cow::Owned(value))
    }

    /// A number: a plain integer (`0`, `-7`, `42`, in `i64` or `u64`) is copied;
    /// anything else serde_json reads and writes, as it would in a `Value`.
    fn number(&mut self) -> Option<()> {
        let start = self.pos;
        while let Some(b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E') = self.peek() {
            self.pos += 1;
        }
        let token = &self.text[start..self.pos];
        let digits = token.strip_prefix('-').unwrap_or(token);
        let plain = !digits.is_empty()
            && digits.bytes().all(|b| b.is_ascii_digit())
            && (digits == "0" && digits.len() == token.len() || !digits.starts_with('0'))
            && if digits.len() == token.len() {
                token.parse::<u64>().is_ok()
            } else {
                token.parse::<i64>().is_ok()
            };
        if plain {
            self.out.extend_from_slice(token.as_bytes());
            return Some(());
        }
        match serde_json::from_str::<Value>(token).ok()? {
            number @ Value::Number(_) => serde_json::to_writer(&mut self.out, &number).ok(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn sign(id: &str) -> String {
        crate::provider::dreamclass::sign(b"a subscription key", id)
    }

    /// The prepared route's body for `stored`, and whether it was spliced.
    fn prepared(stored: &[u8]) -> (Result<Vec<u8>, String>, bool) {
        let body = PlatformBody::prepare(stored);
        (body.with_signature(&sign(body.id())), body.is_spliced())
    }

    fn same_as_old(stored: &[u8]) -> bool {
        let old = std::panic::catch_unwind(|| by_value(stored, sign));
        let new = std::panic::catch_unwind(|| prepared(stored).0);
        match (old, new) {
            (Ok(Ok(a)), Ok(Ok(b))) => a == b,
            (Ok(Err(_)), Ok(Err(_))) | (Err(_), Err(_)) => true,
            _ => false,
        }
    }

    #[test]
    fn the_common_shape_is_spliced_and_identical() {
        let cases: &[&str] = &[
            r#"{"id":"e-1","type":"CLASS_CREATED","tenant":"s","signature":"old","timestamp":1700000000000,"data":{"id":1,"name":"Math"}}"#,
            r#"{"id":"e-1","signature":"","data":{}}"#,
            r#"{"id":"e-1","data":[]}"#,
            r#"{}"#,
            "\u{feff}{\"id\":\"bom\",\"signature\":\"x\"}",
            "{ \"id\" : \"spaced\" ,\n\t\"signature\" : null , \"data\" : { \"a\" : [ 1 , 2 ] } }\n",
            r#"{"signature":{"nested":[1,{"x":2}]},"id":"s-first"}"#,
            r#"{"id":"esc\"aped\\\/\u00e9\u0001\n","data":{"k\u0065y":"v\ud83d\ude00"}}"#,
            r#"{"id":7,"data":{"f":1.0,"e":1E2,"g":-0,"h":-0.0,"i":12345678901234567890123,"j":1.5e-7,"k":-9223372036854775808,"l":18446744073709551615,"m":0.1}}"#,
            r#"{"id":"u","data":{"t":true,"f":false,"n":null,"s":"ü€😀","ctl":"\u007f"}}"#,
        ];
        for case in cases {
            let (new, spliced) = prepared(case.as_bytes());
            assert!(spliced, "not spliced: {case}");
            assert_eq!(
                new.unwrap(),
                by_value(case.as_bytes(), sign).unwrap(),
                "differs: {case}"
            );
        }
    }

    #[test]
    fn other_shapes_take_the_old_route_with_its_result() {
        let cases: &[&[u8]] = &[
            br#"{"id":"a","id":"b"}"#,
            br#"{"id":"a","data":{"x":1,"x":2}}"#,
            br#"{"id":"a","signature":"1","signature":"2"}"#,
            br#"{"id":"a",}"#,
            br#"{"id":"a"} x"#,
            br#"{"id":01}"#,
            br#"{"id":"a\x"}"#,
            b"{\"id\":\"raw\x01control\"}",
            b"{\"id\":\"bad utf8 \xff\"}",
            br#"{"id":"\ud800"}"#,
            br#"[1,2]"#,
            br#"null"#,
            br#""#,
            br#"{"id":1.}"#,
            br#"{"id":-}"#,
            br#"{"id":NaN}"#,
            br#"{"id":tru}"#,
        ];
        for case in cases {
            assert!(
                same_as_old(case),
                "differs: {}",
                String::from_utf8_lossy(case)
            );
        }
        let deep = format!(
            "{{\"id\":\"d\",\"data\":{}{}}}",
            "[".repeat(150),
            "]".repeat(150)
        );
        assert!(same_as_old(deep.as_bytes()));
        assert!(!PlatformBody::prepare(deep.as_bytes()).is_spliced());
        let fine = format!(
            "{{\"id\":\"d\",\"data\":{}{}}}",
            "[".repeat(90),
            "]".repeat(90)
        );
        assert!(PlatformBody::prepare(fine.as_bytes()).is_spliced());
        assert!(same_as_old(fine.as_bytes()));
    }

    #[test]
    fn many_keys_are_checked_for_repeats() {
        let mut body = String::from("{\"id\":\"k\"");
        for n in 0..40 {
            body.push_str(&format!(",\"k{n}\":{n}"));
        }
        let repeated = format!("{body},\"k3\":0}}");
        body.push('}');
        assert!(PlatformBody::prepare(body.as_bytes()).is_spliced());
        assert!(same_as_old(body.as_bytes()));
        assert!(!PlatformBody::prepare(repeated.as_bytes()).is_spliced());
        assert!(same_as_old(repeated.as_bytes()));
    }

    // ---- random envelopes, compared with the old route ----

    fn random_string(rng: &mut StdRng) -> String {
        const PIECES: &[&str] = &[
            "a",
            "Z",
            "0",
            " ",
            "\"",
            "\\",
            "/",
            "\n",
            "\t",
            "\r",
            "\u{8}",
            "\u{c}",
            "\u{1}",
            "\u{1f}",
            "\u{7f}",
            "é",
            "€",
            "😀",
            "id",
            "signature",
            "data",
            "-",
            ".",
            "\u{2028}",
        ];
        let n = rng.random_range(0..8);
        (0..n)
            .map(|_| PIECES[rng.random_range(0..PIECES.len())])
            .collect()
    }

    fn random_key(rng: &mut StdRng) -> String {
        const KEYS: &[&str] = &["id", "signature", "type", "data", "a", "b", "é", "x\"y", ""];
        if rng.random_bool(0.7) {
            KEYS[rng.random_range(0..KEYS.len())].to_string()
        } else {
            random_string(rng)
        }
    }

    /// A number token, written in one of the ways JSON allows (and a few it does not).
    fn random_number(rng: &mut StdRng) -> String {
        match rng.random_range(0..14) {
            0 => rng.random_range(-1000i64..1000).to_string(),
            1 => rng.random::<i64>().to_string(),
            2 => rng.random::<u64>().to_string(),
            3 => format!("{}", rng.random::<f64>() * 1e6),
            4 => format!("{:e}", rng.random::<f64>()),
            5 => format!("{}E{}", rng.random_range(1..99), rng.random_range(-30..30)),
            6 => format!(
                "-{}.{}e+{}",
                rng.random_range(0..9),
                rng.random_range(0..999),
                rng.random_range(0..400)
            ),
            7 => "-0".into(),
            8 => "-0.0".into(),
            9 => "123456789012345678901234567890".into(),
            10 => "0.1".into(),
            11 => ["01", "1.", ".5", "+1", "1e", "--1"][rng.random_range(0..6)].into(),
            12 => "1.0".into(),
            _ => "1e400".into(),
        }
    }

    fn ws(rng: &mut StdRng, spaced: bool) -> &'static str {
        if !spaced || rng.random_bool(0.5) {
            return "";
        }
        [" ", "\n", "\t", "\r\n  ", "  "][rng.random_range(0..5)]
    }

    /// A JSON string token for `value`: as serde_json writes it, or with other
    /// (valid) escapes.
    fn string_token(rng: &mut StdRng, value: &str, odd_escapes: bool) -> String {
        if !odd_escapes || rng.random_bool(0.6) {
            return serde_json::to_string(value).unwrap();
        }
        let mut out = String::from("\"");
        for c in value.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '/' if rng.random_bool(0.5) => out.push_str("\\/"),
                c if (c as u32) < 0x20 || rng.random_bool(0.2) => {
                    let mut units = [0u16; 2];
                    for unit in c.encode_utf16(&mut units) {
                        if rng.random_bool(0.5) {
                            out.push_str(&format!("\\u{unit:04x}"));
                        } else {
                            out.push_str(&format!("\\u{unit:04X}"));
                        }
                    }
                }
                c => out.push(c),
            }
        }
        out.push('"');
        out
    }

    struct Style {
        spaced: bool,
        odd_escapes: bool,
        repeats: bool,
    }

    fn random_value(rng: &mut StdRng, depth: usize, style: &Style, out: &mut String) {
        let leaf = depth > 4 || rng.random_bool(0.4);
        match if leaf {
            rng.random_range(0..6)
        } else {
            rng.random_range(6..8)
        } {
            0 | 1 => {
                let value = random_string(rng);
                out.push_str(&string_token(rng, &value, style.odd_escapes));
            }
            2 | 3 => out.push_str(&random_number(rng)),
            4 => out.push_str(["true", "false"][rng.random_range(0..2)]),
            5 => out.push_str("null"),
            6 => {
                out.push('[');
                let n = rng.random_range(0..4);
                for i in 0..n {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(ws(rng, style.spaced));
                    random_value(rng, depth + 1, style, out);
                    out.push_str(ws(rng, style.spaced));
                }
                out.push(']');
            }
            _ => random_object(rng, depth + 1, style, out, &[]),
        }
    }

    fn random_object(
        rng: &mut StdRng,
        depth: usize,
        style: &Style,
        out: &mut String,
        required: &[(&str, Option<String>)],
    ) {
        let mut members: Vec<(String, Option<String>)> = required
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        for _ in 0..rng.random_range(0..5) {
            members.push((random_key(rng), None));
        }
        if !style.repeats {
            let mut seen = HashSet::new();
            members.retain(|(k, _)| seen.insert(k.clone()));
        }
        // Shuffle.
        for i in (1..members.len()).rev() {
            members.swap(i, rng.random_range(0..=i));
        }
        out.push('{');
        for (i, (key, value)) in members.into_iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(ws(rng, style.spaced));
            out.push_str(&string_token(rng, &key, style.odd_escapes));
            out.push_str(ws(rng, style.spaced));
            out.push(':');
            out.push_str(ws(rng, style.spaced));
            match value {
                Some(token) => out.push_str(&token),
                None => random_value(rng, depth, style, out),
            }
            out.push_str(ws(rng, style.spaced));
        }
        out.push('}');
    }

    /// A random DreamClass-like envelope: `id` a string (mostly), `signature`
    /// present (mostly), other members and `data` random, in random order.
    fn random_envelope(rng: &mut StdRng, style: &Style) -> String {
        let mut required: Vec<(&str, Option<String>)> = Vec::new();
        if rng.random_bool(0.9) {
            let id = if rng.random_bool(0.9) {
                string_token(rng, &uuid::Uuid::new_v4().to_string(), style.odd_escapes)
            } else {
                random_number(rng)
            };
            required.push(("id", Some(id)));
        }
        if rng.random_bool(0.8) {
            required.push(("signature", None));
        }
        required.push(("type", Some("\"ATTENDANCE_UPDATED\"".into())));
        required.push(("timestamp", Some(rng.random::<u32>().to_string())));
        required.push(("data", None));
        let mut out = String::from(ws(rng, style.spaced));
        random_object(rng, 0, style, &mut out, &required);
        out.push_str(ws(rng, style.spaced));
        out
    }

    #[test]
    fn random_envelopes_are_identical_to_the_old_route() {
        let mut rng = StdRng::seed_from_u64(0x5eed_0018);
        let (mut spliced, mut valid_bodies) = (0, 0);
        for n in 0..6000 {
            let style = Style {
                spaced: n % 3 == 1,
                odd_escapes: n % 4 == 2,
                repeats: n % 10 == 9,
            };
            let body = random_envelope(&mut rng, &style);
            let bom = n % 50 == 7;
            let stored = if bom { format!("\u{feff}{body}") } else { body };
            assert!(
                same_as_old(stored.as_bytes()),
                "differs (case {n}): {stored}"
            );
            let valid = by_value(stored.as_bytes(), sign).is_ok();
            let is_spliced = PlatformBody::prepare(stored.as_bytes()).is_spliced();
            // Valid JSON without a repeated key always takes the new route.
            assert!(
                is_spliced || !valid || style.repeats,
                "not spliced (case {n}): {stored}"
            );
            valid_bodies += usize::from(valid);
            spliced += usize::from(is_spliced);
        }
        // Most of them are valid, and most of those were spliced (the rest have a
        // repeated key).
        assert!(valid_bodies > 3000, "{valid_bodies} valid");
        assert!(
            spliced * 10 > valid_bodies * 8,
            "{spliced} of {valid_bodies} valid ones spliced"
        );
    }

    #[test]
    fn compact_random_envelopes_are_all_spliced() {
        // What serde_json writes (every body classhook itself produces) always
        // takes the new route.
        let mut rng = StdRng::seed_from_u64(18);
        let style = Style {
            spaced: false,
            odd_escapes: false,
            repeats: false,
        };
        let mut checked = 0;
        while checked < 2000 {
            let body = random_envelope(&mut rng, &style);
            let Ok(value) = serde_json::from_str::<Value>(&body) else {
                continue; // an invalid number token
            };
            let compact = serde_json::to_vec(&value).unwrap();
            let (new, spliced) = prepared(&compact);
            assert!(spliced, "{}", String::from_utf8_lossy(&compact));
            assert_eq!(new.unwrap(), by_value(&compact, sign).unwrap());
            checked += 1;
        }
    }
}
