//! Replays what the fuzzers check (`tests/fuzz_checks/`) on every file of
//! `tests/fuzz-corpus/<target>/` (nasty inputs and the minimized crashes the fuzzers
//! found), and on nasty inputs too big to commit, built here: deep nesting, a
//! 1 MiB string, NUL bytes. `./scripts/fuzz` runs the fuzzers themselves.

mod fuzz_checks;

use std::path::PathBuf;

use fuzz_checks::{ConfigInput, Form, Place, SignatureInput, TARGETS};

const MIB: usize = 1 << 20;

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-corpus")
}

#[test]
fn every_corpus_file_passes_its_targets_checks() {
    let mut replayed = 0;
    for (target, check) in TARGETS {
        let dir = corpus_dir().join(target);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.is_file())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "{} holds no inputs", dir.display());
        for file in files {
            let data = std::fs::read(&file).unwrap();
            let outcome = std::panic::catch_unwind(|| check(&data));
            assert!(outcome.is_ok(), "{target}: {} fails", file.display());
            replayed += 1;
        }
    }
    assert!(replayed >= TARGETS.len());
}

/// `depth` times `open`, then `inner`, then `depth` times `close`.
fn nested(open: &str, inner: &str, close: &str, depth: usize) -> Vec<u8> {
    let mut out = open.repeat(depth).into_bytes();
    out.extend_from_slice(inner.as_bytes());
    out.extend_from_slice(close.repeat(depth).as_bytes());
    out
}

fn dreamclass_body(data: &str) -> Vec<u8> {
    format!(
        r#"{{"id":"6f1c9b1e-3a52-4c8e-9d2f-0b7a5e4d3c21","type":"CLASS_UPDATED","tenant":"t","signature":"x","timestamp":1700000000000,"data":{data}}}"#
    )
    .into_bytes()
}

fn loopwise_body(data: &str) -> Vec<u8> {
    format!(r#"{{"type":"course.updated","data":{data}}}"#).into_bytes()
}

#[test]
fn deep_nesting_is_refused_without_overflowing_the_stack() {
    let depth = 100_000;
    let mut bodies = vec![
        nested("[", "", "", depth),
        nested("[", "", "]", depth),
        nested("{\"a\":", "1", "}", depth),
        nested("{\"a\":[", "1", "]}", depth),
    ];
    // Deep inside an otherwise valid envelope, and just within serde_json's limit.
    let deep = String::from_utf8(nested("[", "1", "]", depth)).unwrap();
    bodies.push(dreamclass_body(&format!("{{\"id\":\"c\",\"x\":{deep}}}")));
    bodies.push(loopwise_body(&format!("{{\"id\":\"c\",\"x\":{deep}}}")));
    let within = String::from_utf8(nested("[", "1", "]", 120)).unwrap();
    bodies.push(dreamclass_body(&format!("{{\"id\":\"c\",\"x\":{within}}}")));
    bodies.push(loopwise_body(&format!("{{\"id\":\"c\",\"x\":{within}}}")));
    for body in &bodies {
        fuzz_checks::dreamclass_envelope(body);
        fuzz_checks::loopwise_envelope(body);
    }

    let toml_deep = [
        [b"a = ".to_vec(), nested("[", "", "", depth)].concat(),
        [b"a = ".to_vec(), nested("[", "1", "]", depth)].concat(),
        [b"a = ".to_vec(), nested("{ b = ", "1", " }", depth)].concat(),
        [b"server = ".to_vec(), nested("[", "1", "]", depth)].concat(),
        nested("[", "a", "]", depth),
        [
            b"x".to_vec(),
            ".x".repeat(depth).into_bytes(),
            b" = 1".to_vec(),
        ]
        .concat(),
    ];
    for text in toml_deep {
        config_text(
            String::from_utf8(text).unwrap(),
            Place::SourceSecret(Form::Basic, false),
        );
    }
}

fn config_text(text: String, place: Place) {
    fuzz_checks::check_config(&ConfigInput {
        place,
        secret: "hunter2".into(),
        vars: vec![],
        lookups: vec![],
        text,
    });
}

/// 1 MiB strings where a sender controls them (each through its own platform's
/// checks only: in a debug build every MiB costs a fraction of a second).
#[test]
fn a_mebibyte_string_anywhere() {
    let long = "é".repeat(MIB / 2);
    let quoted = serde_json::to_string(&long).unwrap();
    fuzz_checks::dreamclass_envelope(&dreamclass_body(&format!(
        "{{\"id\":\"c\",\"name\":{quoted},\"code\":[{quoted}]}}"
    )));
    fuzz_checks::loopwise_envelope(&format!(r#"{{"type":{quoted},"data":{{}}}}"#).into_bytes());
    fuzz_checks::loopwise_envelope(&format!(r#"{{{quoted}:1,{quoted}:2}}"#).into_bytes());
    // A 1 MiB signature header.
    let mut framed = "a".repeat(MIB).into_bytes();
    framed.push(0);
    framed.extend(loopwise_body("{}"));
    fuzz_checks::loopwise_envelope(&framed);

    fuzz_checks::check_signatures(&SignatureInput {
        key: vec![7; 64],
        message: vec![0; MIB],
        signature: "A".repeat(MIB).into_bytes(),
        uuid: [1; 16],
        uuid_form: 0,
        secret: "QUFB".repeat(MIB / 4),
        base64: true,
        loopwise: false,
    });

    for place in [Place::SourceSecret(Form::Basic, true), Place::EnvProxy] {
        fuzz_checks::check_config(&ConfigInput {
            place,
            secret: long.clone(),
            vars: vec![("CLASSHOOK_SERVER_LISTEN".into(), long.clone())],
            lookups: vec![],
            text: format!("[server]\ndata_dir = {}\n", toml_string(&long)),
        });
    }

    let pattern = "A".repeat(MIB);
    fuzz_checks::check_patterns(
        vec![format!("{pattern}*"), pattern.clone(), "*".into()],
        vec![pattern.clone(), format!("{pattern}B")],
    );
    fuzz_checks::check_patterns(vec!["A*".into(), "B".into()], vec![pattern]);
}

fn toml_string(text: &str) -> String {
    toml::Value::String(text.to_string()).to_string()
}

#[test]
fn nul_bytes_and_control_characters() {
    for body in [
        dreamclass_body("{\"id\":\"a\\u0000b\",\"name\":\"\\u0000\"}"),
        loopwise_body("{\"id\":\"a\\u0000b\",\"email\":\"\\u0000@x\"}"),
        b"{\"type\":\"course.updated\x00\",\"data\":{}}".to_vec(),
        b"\0".to_vec(),
        b"\0\0\0".to_vec(),
    ] {
        fuzz_checks::dreamclass_envelope(&body);
        fuzz_checks::loopwise_envelope(&body);
    }
    config_text(
        "[server]\nlisten = \"127.0.0.1:80\0\"\n\0".into(),
        Place::SourceSecret(Form::Literal, false),
    );
    fuzz_checks::check_config(&ConfigInput {
        place: Place::EnvSourceSecret(true),
        secret: "\0\u{1}\u{7f}".into(),
        vars: vec![("CLASSHOOK_SOURCE_S\0_SECRET".into(), "\0".into())],
        lookups: vec![("FUZZ_SECRET\0".into(), "\0".into())],
        text: String::new(),
    });
    fuzz_checks::check_patterns(
        vec!["\0*".into(), "\0".into(), "A\0".into()],
        vec!["\0".into(), "\0\0".into(), "".into()],
    );
}

#[test]
fn reasons_quote_long_values_shortened() {
    let long = "x".repeat(10_000);
    for body in [
        // Undocumented types of 10,000 characters.
        String::from_utf8(dreamclass_body("{}"))
            .unwrap()
            .replace("CLASS_UPDATED", &long)
            .into_bytes(),
        String::from_utf8(loopwise_body("{}"))
            .unwrap()
            .replace("course.updated", &long)
            .into_bytes(),
        // A documented type whose field holds 10,000 characters of the wrong type.
        dreamclass_body(&format!(
            "{{\"id\":\"c\",\"code\":[\"{long}\"],\"name\":{{\"{long}\":1}}}}"
        )),
        loopwise_body(&format!("{{\"id\":\"{long}\",\"name\":1}}")),
    ] {
        fuzz_checks::dreamclass_envelope(&body);
        fuzz_checks::loopwise_envelope(&body);
    }
}
