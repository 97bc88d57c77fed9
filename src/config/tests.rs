use std::path::Path;

use super::*;

fn parse(text: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let vars: Vec<(String, String)> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let lookup = |name: &str| match name {
        "SCHOOL_SECRET" => Some("from-env".to_string()),
        _ => None,
    };
    Config::from_toml_str(Path::new("test.toml"), text, &vars, &lookup)
}

const TWO_SOURCES: &str = r#"
[server]
listen = "127.0.0.1:9000"

[[source]]
name = "school"
provider = "dreamclass"
secret = "c2VjcmV0"
secret_encoding = "base64"
tenants = ["my-school"]

[[source]]
name = "courses"
provider = "loopwise"
"#;

#[test]
fn defaults_apply_when_the_file_is_silent() {
    let config = parse("", &[]).unwrap();
    assert_eq!(config.server.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(config.server.data_dir, Path::new("./classhook-data"));
    assert_eq!(config.server.max_body_bytes, 1024 * 1024);
    assert!(config.sources.is_empty());
}

#[test]
fn sources_resolve_their_keys() {
    let config = parse(TWO_SOURCES, &[]).unwrap();
    let school = config.source("school").unwrap();
    assert_eq!(school.signing_key.as_ref().unwrap().expose(), b"secret");
    assert_eq!(
        school.tenants.as_deref(),
        Some(&["my-school".to_string()][..])
    );
    assert!(config.source("courses").unwrap().signing_key.is_none());
}

#[test]
fn the_example_config_loads() {
    let text = include_str!("../../classhook.example.toml");
    let config = parse(text, &[]).unwrap();
    assert_eq!(config.sources.len(), 2);
}

#[test]
fn environment_overrides_server_and_source_keys() {
    let config = parse(
        TWO_SOURCES,
        &[
            ("CLASSHOOK_SERVER_LISTEN", "0.0.0.0:7000"),
            ("CLASSHOOK_SERVER_MAX_BODY_BYTES", "2048"),
            ("CLASSHOOK_SOURCE_COURSES_SECRET", "s3cret"),
            ("CLASSHOOK_SOURCE_SCHOOL_TENANTS", "a, b"),
            ("CLASSHOOK_SOURCE_SCHOOL_SECRET_ENCODING", "utf8"),
            ("CLASSHOOK_SOURCE_SCHOOL_BASIC_AUTH_USERNAME", "dc"),
            ("CLASSHOOK_SOURCE_SCHOOL_BASIC_AUTH_PASSWORD", "pw"),
            ("UNRELATED", "x"),
        ],
    )
    .unwrap();
    assert_eq!(config.server.listen.to_string(), "0.0.0.0:7000");
    assert_eq!(config.server.max_body_bytes, 2048);
    let courses = config.source("courses").unwrap();
    assert_eq!(courses.signing_key.as_ref().unwrap().expose(), b"s3cret");
    let school = config.source("school").unwrap();
    assert_eq!(school.tenants.as_ref().unwrap(), &["a", "b"]);
    assert_eq!(school.signing_key.as_ref().unwrap().expose(), b"c2VjcmV0");
    assert_eq!(school.basic_auth.as_ref().unwrap().password.expose(), "pw");
}

#[test]
fn secret_env_reads_the_named_variable() {
    let text = r#"
[[source]]
name = "s"
provider = "dreamclass"
secret_env = "SCHOOL_SECRET"
"#;
    let config = parse(text, &[]).unwrap();
    assert_eq!(
        config.sources[0].signing_key.as_ref().unwrap().expose(),
        b"from-env"
    );
}

fn error_of(text: &str, vars: &[(&str, &str)]) -> String {
    parse(text, vars).unwrap_err().to_string()
}

#[test]
fn errors_name_file_key_and_problem() {
    let bad_provider = error_of("[[source]]\nname = \"s\"\nprovider = \"moodle\"\n", &[]);
    assert!(
        bad_provider.starts_with("test.toml: source[0].provider (in source \"s\"):"),
        "{bad_provider}"
    );
    assert!(bad_provider.contains("dreamclass"), "{bad_provider}");

    let unknown_key = error_of("[server]\nlisten_on = \"x\"\n", &[]);
    assert!(unknown_key.contains("listen_on"), "{unknown_key}");

    let bad_listen = error_of("[server]\nlisten = \"nowhere\"\n", &[]);
    assert!(
        bad_listen.starts_with("test.toml: server.listen:"),
        "{bad_listen}"
    );

    let missing_env = error_of(
        "[[source]]\nname = \"s\"\nprovider = \"loopwise\"\nsecret_env = \"NOPE\"\n",
        &[],
    );
    assert!(
        missing_env.contains("source[0].secret_env") && missing_env.contains("NOPE"),
        "{missing_env}"
    );

    let syntax = error_of("[server\n", &[]);
    assert!(syntax.starts_with("test.toml: line 1"), "{syntax}");

    let bad_override = error_of("", &[("CLASSHOOK_SERVER_LISTN", "x")]);
    assert!(
        bad_override.contains("CLASSHOOK_SERVER_LISTN"),
        "{bad_override}"
    );

    let bad_number = error_of("", &[("CLASSHOOK_SERVER_MAX_BODY_BYTES", "lots")]);
    assert!(bad_number.contains("server.max_body_bytes"), "{bad_number}");
}

#[test]
fn rules_across_fields_are_enforced() {
    let base64_loopwise = error_of(
        "[[source]]\nname = \"s\"\nprovider = \"loopwise\"\nsecret = \"x\"\nsecret_encoding = \"base64\"\n",
        &[],
    );
    assert!(
        base64_loopwise.contains("DreamClass only"),
        "{base64_loopwise}"
    );

    let bad_base64 = error_of(
        "[[source]]\nname = \"s\"\nprovider = \"dreamclass\"\nsecret = \"not base64!!\"\nsecret_encoding = \"base64\"\n",
        &[],
    );
    assert!(bad_base64.contains("not valid base64"), "{bad_base64}");
    assert!(
        !bad_base64.contains("not base64!!"),
        "the secret leaked: {bad_base64}"
    );

    let duplicate = error_of(
        "[[source]]\nname = \"s\"\nprovider = \"loopwise\"\n[[source]]\nname = \"s\"\nprovider = \"loopwise\"\n",
        &[],
    );
    assert!(duplicate.contains("source[1].name"), "{duplicate}");

    let tenants_on_loopwise = error_of(
        "[[source]]\nname = \"s\"\nprovider = \"loopwise\"\ntenants = [\"a\"]\n",
        &[],
    );
    assert!(
        tenants_on_loopwise.contains("source[0].tenants"),
        "{tenants_on_loopwise}"
    );

    let bad_name = error_of("[[source]]\nname = \"a/b\"\nprovider = \"loopwise\"\n", &[]);
    assert!(bad_name.contains("source[0].name"), "{bad_name}");
}

#[test]
fn secrets_do_not_show_in_debug_output() {
    let config = parse(
        TWO_SOURCES,
        &[("CLASSHOOK_SOURCE_COURSES_SECRET", "s3cret-value")],
    )
    .unwrap();
    let debug = format!("{config:?}");
    assert!(!debug.contains("s3cret-value"), "{debug}");
    assert!(!debug.contains("c2VjcmV0"), "{debug}");
}

#[test]
fn subscriptions_resolve_with_defaults_and_checked_fields() {
    let text = r#"
[[subscription]]
name = "crm"
url = "https://crm.example/hooks"
events = ["CLASS_*", "course.*"]
secret_env = "SCHOOL_SECRET"
"#;
    let config = parse(text, &[]).unwrap();
    let crm = &config.subscriptions[0];
    assert_eq!(crm.timeout, std::time::Duration::from_secs(10));
    assert_eq!(crm.retry_schedule.len(), 3);
    assert_eq!(crm.max_in_flight, 8);
    assert_eq!(crm.ordering, crate::deliver::ordering::Ordering::None);
    assert_eq!(crm.rate_limit, None, "no rate limit unless declared");
    assert_eq!(crm.secret.as_ref().unwrap().expose(), "from-env");
    let limited = parse(&format!("{text}rate_limit = \"600/min\"\n"), &[]).unwrap();
    assert_eq!(
        limited.subscriptions[0].rate_limit.map(|r| r.to_string()),
        Some("600/min".into())
    );
    assert!(config.delivery.enabled && !config.delivery.allow_private_destinations);

    let bad_url = error_of(
        "[[subscription]]\nname = \"x\"\nurl = \"ftp://x\"\nevents = [\"*\"]\n",
        &[],
    );
    assert!(
        bad_url.contains("subscription[0]") && bad_url.contains("http"),
        "{bad_url}"
    );
    let bad_step = error_of(
        "[[subscription]]\nname = \"x\"\nurl = \"https://x.example\"\nevents = [\"*\"]\nretry_schedule = [\"soon\"]\n",
        &[],
    );
    assert!(
        bad_step.contains("subscription[0].retry_schedule"),
        "{bad_step}"
    );
    let bad_pattern = error_of(
        "[[subscription]]\nname = \"x\"\nurl = \"https://x.example\"\nevents = [\"C*S\"]\n",
        &[],
    );
    assert!(bad_pattern.contains("C*S"), "{bad_pattern}");
    let flag = parse("", &[("CLASSHOOK_DELIVERY_ENABLED", "false")]).unwrap();
    assert!(!flag.delivery.enabled);
}

#[test]
fn allowlists_and_trusted_proxies_parse_from_file_and_environment() {
    let text = r#"
[server]
trusted_proxies = ["10.0.0.0/8", "::1"]

[[source]]
name = "courses"
provider = "loopwise"
allowed_ips = ["52.194.91.27", "43.207.76.33/32"]
"#;
    let ip = |t: &str| t.parse::<std::net::IpAddr>().unwrap();
    let config = parse(text, &[]).unwrap();
    assert!(config.server.trusted_proxies.contains(ip("10.1.2.3")));
    let allowed = config
        .source("courses")
        .unwrap()
        .allowed_ips
        .clone()
        .unwrap();
    assert!(allowed.contains(ip("52.194.91.27")) && allowed.contains(ip("43.207.76.33")));
    assert!(!allowed.contains(ip("52.194.91.28")));

    let config = parse(
        text,
        &[
            (
                "CLASSHOOK_SOURCE_COURSES_ALLOWED_IPS",
                "192.0.2.0/24, 2001:db8::1",
            ),
            ("CLASSHOOK_SERVER_TRUSTED_PROXIES", "172.16.0.1"),
        ],
    )
    .unwrap();
    let allowed = config
        .source("courses")
        .unwrap()
        .allowed_ips
        .clone()
        .unwrap();
    assert_eq!(allowed.to_string(), "192.0.2.0/24, 2001:db8::1/128");
    assert!(!allowed.contains(ip("52.194.91.27")));
    assert_eq!(config.server.trusted_proxies.to_string(), "172.16.0.1/32");

    // Without the keys: any sender, no proxy trusted.
    let config = parse(TWO_SOURCES, &[]).unwrap();
    assert!(config.source("courses").unwrap().allowed_ips.is_none());
    assert!(config.server.trusted_proxies.is_empty());
}

#[test]
fn bad_allowlists_name_the_key_and_the_entry() {
    let source = |list: &str| {
        format!("[[source]]\nname = \"s\"\nprovider = \"loopwise\"\nallowed_ips = {list}\n")
    };
    let bad = error_of(&source(r#"["52.194.91.27", "52.194.91/24"]"#), &[]);
    assert!(
        bad.starts_with("test.toml: source[0].allowed_ips (in source \"s\"):")
            && bad.contains("\"52.194.91/24\""),
        "{bad}"
    );
    let host_bits = error_of(&source(r#"["52.194.91.27/24"]"#), &[]);
    assert!(
        host_bits.contains("source[0].allowed_ips") && host_bits.contains("52.194.91.0/24"),
        "{host_bits}"
    );
    let empty = error_of(&source("[]"), &[]);
    assert!(
        empty.contains("source[0].allowed_ips") && empty.contains("refuse every request"),
        "{empty}"
    );
    let not_a_list = error_of(&source(r#""52.194.91.27""#), &[]);
    assert!(not_a_list.contains("source[0].allowed_ips"), "{not_a_list}");

    let proxy = error_of("[server]\ntrusted_proxies = [\"proxy.local\"]\n", &[]);
    assert!(
        proxy.starts_with("test.toml: server.trusted_proxies:") && proxy.contains("proxy.local"),
        "{proxy}"
    );
    let from_env = error_of(
        "",
        &[("CLASSHOOK_SERVER_TRUSTED_PROXIES", "10.0.0.1, nope")],
    );
    assert!(
        from_env.contains("server.trusted_proxies") && from_env.contains("\"nope\""),
        "{from_env}"
    );
    let misspelt = error_of(
        &source(r#"["52.194.91.27"]"#),
        &[("CLASSHOOK_SOURCE_S_ALLOWED_IP", "1.2.3.4")],
    );
    assert!(
        misspelt.contains("CLASSHOOK_SOURCE_S_ALLOWED_IP"),
        "{misspelt}"
    );
}

/// Every secret-bearing key (`secret`, `password`, `tokens`, `basic_auth`, `proxy`
/// and anything under them), given a value of the wrong type or an unusable value,
/// in the file or through the environment: the error names the key, never the value.
#[test]
fn errors_never_show_a_secret_value() {
    const S: &str = "Zq7SecretValue9x";
    const N: &str = "987654321987";
    let source =
        |extra: &str| format!("[[source]]\nname = \"s\"\nprovider = \"dreamclass\"\n{extra}\n");
    let subscription = |extra: &str| {
        format!(
            "[delivery]\nallow_private_destinations = true\n[[subscription]]\nname = \"x\"\nurl = \"https://x.example\"\nevents = [\"*\"]\n{extra}\n"
        )
    };
    // (file text, environment, the key the error names)
    type Case = (String, Vec<(&'static str, String)>, &'static str);
    let cases: Vec<Case> = vec![
        // Wrong types in the file.
        (source(&format!("secret = {N}")), vec![], "source[0].secret"),
        (
            source(&format!("secret = {{ v = \"{S}\" }}")),
            vec![],
            "source[0].secret",
        ),
        (
            source(&format!("basic_auth = \"user:{S}\"")),
            vec![],
            "source[0].basic_auth",
        ),
        (
            source(&format!("basic_auth = [\"user\", \"{S}\"]")),
            vec![],
            "source[0].basic_auth",
        ),
        (
            source(&format!(
                "basic_auth = {{ username = \"u\", password = {N} }}"
            )),
            vec![],
            "source[0].basic_auth.password",
        ),
        (
            source(&format!(
                "basic_auth = {{ username = \"u\", password = [\"{S}\"] }}"
            )),
            vec![],
            "source[0].basic_auth.password",
        ),
        (format!("[api]\ntokens = \"{S}\"\n"), vec![], "api.tokens"),
        (
            format!("[api]\ntokens = \"{S},{S}\"\n"),
            vec![],
            "api.tokens",
        ),
        (
            format!("[api]\ntokens = [\"{S}{S}\", {N}]\n"),
            vec![],
            "api.tokens[1]",
        ),
        (
            format!("[api]\ntokens = [\"{}\"]\n", &S[..10]),
            vec![],
            "api.tokens",
        ),
        (
            subscription(&format!("secret = {N}")),
            vec![],
            "subscription[0].secret",
        ),
        (
            subscription(&format!("basic_auth = \"user:{S}\"")),
            vec![],
            "subscription[0].basic_auth",
        ),
        (
            subscription(&format!(
                "basic_auth = {{ username = \"u\", password = {N} }}"
            )),
            vec![],
            "subscription[0].basic_auth.password",
        ),
        (
            subscription(&format!("secret = \"whsec_{S}!!\"")),
            vec![],
            "subscription[0].secret",
        ),
        (
            format!("[delivery]\nproxy = {{ url = \"http://u:{S}@proxy.example:3128\" }}\n"),
            vec![],
            "delivery.proxy",
        ),
        (
            format!("[delivery]\nproxy = {N}\n"),
            vec![],
            "delivery.proxy",
        ),
        (
            format!("[delivery]\nproxy = \"ftp://u:{S}@proxy.example\"\n"),
            vec![],
            "delivery.proxy",
        ),
        (
            format!("[delivery]\nproxy = \"u:{S}@proxy.example:3128\"\n"),
            vec![],
            "delivery.proxy",
        ),
        (
            source(&format!("secret = \"{S}!!\"\nsecret_encoding = \"base64\"")),
            vec![],
            "source[0].secret_encoding",
        ),
        // Through the environment.
        (
            source(&format!("basic_auth = \"user:{S}\"")),
            vec![("CLASSHOOK_SOURCE_S_BASIC_AUTH_PASSWORD", format!("{S}2"))],
            "source[0].basic_auth",
        ),
        (
            source("secret_encoding = \"base64\""),
            vec![("CLASSHOOK_SOURCE_S_SECRET", format!("{S}!!"))],
            "source[0].secret_encoding",
        ),
        (
            String::new(),
            vec![("CLASSHOOK_API_TOKENS", format!("{S}{S},{}", &S[..10]))],
            "api.tokens",
        ),
        (
            String::new(),
            vec![(
                "CLASSHOOK_DELIVERY_PROXY",
                format!("ftp://u:{S}@proxy.example"),
            )],
            "delivery.proxy",
        ),
        (
            String::new(),
            vec![(
                "CLASSHOOK_DELIVERY_PROXY",
                format!("u:{S}@proxy.example:3128"),
            )],
            "delivery.proxy",
        ),
        (
            source(""),
            vec![("CLASSHOOK_SOURCE_S_SECRETT", S.to_string())],
            "CLASSHOOK_SOURCE_S_SECRETT",
        ),
        (
            source(""),
            vec![("CLASSHOOK_SOURCE_NOPE_BASIC_AUTH_PASSWORD", S.to_string())],
            "CLASSHOOK_SOURCE_NOPE_BASIC_AUTH_PASSWORD",
        ),
        (
            String::new(),
            vec![("CLASSHOOK_API_TOKEN", S.to_string())],
            "CLASSHOOK_API_TOKEN",
        ),
        // Syntax errors on a secret's line.
        (source(&format!("secret = {S}")), vec![], "line 4"),
        (source(&format!("secret = \"{S}")), vec![], "line 4"),
        (source(&format!("secret = \"{S}\\q\"")), vec![], "line 4"),
        (
            format!("[api]\ntokens = [\"{S}\" \"{S}\"]\n"),
            vec![],
            "line 2",
        ),
    ];
    for (text, vars, key) in cases {
        let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let error = match parse(&text, &vars) {
            Ok(_) => panic!("expected an error from\n{text}\n{vars:?}"),
            Err(e) => e,
        };
        assert_eq!(error.key, key, "{error}\n{text}");
        let error = error.to_string();
        for secret in [S, N, &S[..10]] {
            assert!(
                !error.contains(secret),
                "the secret leaked: {error}\n{text}"
            );
        }
    }
}

/// Values that would panic a task, spin, or overflow arithmetic are refused at load
/// time, naming the key; the edges of each range load.
#[test]
fn values_that_would_crash_are_refused_with_the_key_named() {
    let subscription = |extra: &str| {
        format!(
            "[[subscription]]\nname = \"x\"\nurl = \"https://x.example\"\nevents = [\"*\"]\n{extra}\n"
        )
    };
    let refused = [
        (
            "[retention]\nevents_days = 30\ninterval = \"0s\"\n".to_string(),
            "retention.interval",
        ),
        (
            "[retention]\ninterval = \"1000000000years\"\n".into(),
            "retention.interval",
        ),
        (
            "[retention]\nevents_days = 0\n".into(),
            "retention.events_days",
        ),
        (
            "[retention]\nevents_days = 10000000000000\n".into(),
            "retention.events_days",
        ),
        (
            "[server]\nread_timeout = \"0s\"\n".into(),
            "server.read_timeout",
        ),
        (
            "[server]\nread_timeout = \"1000000000years\"\n".into(),
            "server.read_timeout",
        ),
        (
            "[server]\nappend_timeout = \"0s\"\n".into(),
            "server.append_timeout",
        ),
        (
            "[server]\nappend_timeout = \"1h\"\n".into(),
            "server.append_timeout",
        ),
        (
            "[server]\nshutdown_grace = \"1000000000years\"\n".into(),
            "server.shutdown_grace",
        ),
        (
            "[server]\nmax_body_bytes = 0\n".into(),
            "server.max_body_bytes",
        ),
        (
            "[server]\nmax_body_bytes = 9223372036854775807\n".into(),
            "server.max_body_bytes",
        ),
        (
            "[delivery]\npoll_interval = \"0s\"\n".into(),
            "delivery.poll_interval",
        ),
        (
            "[delivery]\npoll_interval = \"1000000000years\"\n".into(),
            "delivery.poll_interval",
        ),
        (
            "[delivery]\nlease_margin = \"1000000000years\"\n".into(),
            "delivery.lease_margin",
        ),
        (
            subscription("retry_schedule = [\"10s\", \"1000000000years\"]"),
            "subscription[0].retry_schedule",
        ),
        (
            subscription("timeout = \"1000000000years\""),
            "subscription[0].timeout",
        ),
        (subscription("timeout = \"0s\""), "subscription[0].timeout"),
        (
            subscription("max_in_flight = 0"),
            "subscription[0].max_in_flight",
        ),
        (
            subscription("ordering = \"fifo\""),
            "subscription[0].ordering",
        ),
        (
            subscription("rate_limit = \"20 per second\""),
            "subscription[0].rate_limit",
        ),
        (
            subscription("rate_limit = \"0/s\""),
            "subscription[0].rate_limit",
        ),
    ];
    for (text, key) in refused {
        let error = match parse(&text, &[]) {
            Ok(_) => panic!("expected an error from\n{text}"),
            Err(e) => e,
        };
        assert_eq!(error.key, key, "{error}");
    }
    let from_env = error_of("", &[("CLASSHOOK_RETENTION_INTERVAL", "0s")]);
    assert!(
        from_env.starts_with("test.toml: retention.interval:"),
        "{from_env}"
    );
    let from_env = error_of("", &[("CLASSHOOK_DELIVERY_POLL_INTERVAL", "0ms")]);
    assert!(
        from_env.starts_with("test.toml: delivery.poll_interval:"),
        "{from_env}"
    );

    let edges = "[server]\nread_timeout = \"10ms\"\nappend_timeout = \"45s\"\nshutdown_grace = \"0s\"\nmax_body_bytes = 268435456\nmax_inflight_body_bytes = 268435456\n\
        [retention]\nevents_days = 36500\ninterval = \"10ms\"\n\
        [delivery]\npoll_interval = \"1h\"\nlease_margin = \"0s\"\n";
    let config = parse(
        &format!("{edges}{}", subscription("retry_schedule = [\"7days\"]")),
        &[],
    )
    .unwrap();
    assert_eq!(
        config.retention.interval,
        std::time::Duration::from_millis(10)
    );
    assert_eq!(config.server.max_body_bytes, 256 * 1024 * 1024);
}

#[test]
fn load_limits_have_defaults_overrides_and_rules() {
    let config = parse("", &[]).unwrap();
    assert_eq!(config.server.max_inflight_body_bytes, 64 * 1024 * 1024);
    assert_eq!(config.server.max_connections, 1024);

    let config = parse(
        "[server]\nmax_inflight_body_bytes = 2097152\nmax_connections = 10\n",
        &[
            ("CLASSHOOK_SERVER_MAX_INFLIGHT_BODY_BYTES", "4194304"),
            ("CLASSHOOK_SERVER_MAX_CONNECTIONS", "20"),
        ],
    )
    .unwrap();
    assert_eq!(config.server.max_inflight_body_bytes, 4 * 1024 * 1024);
    assert_eq!(config.server.max_connections, 20);

    let small = error_of(
        "[server]\nmax_body_bytes = 2048\nmax_inflight_body_bytes = 1024\n",
        &[],
    );
    assert!(
        small.starts_with(
            "test.toml: server.max_inflight_body_bytes: must be at least max_body_bytes (2048)"
        ),
        "{small}"
    );
    let none = error_of("", &[("CLASSHOOK_SERVER_MAX_CONNECTIONS", "0")]);
    assert!(
        none.starts_with("test.toml: server.max_connections: must be greater than 0"),
        "{none}"
    );
    let typo = error_of("[server]\nmax_connection = 5\n", &[]);
    assert!(typo.contains("max_connection"), "{typo}");
}

/// Every kind of `*_env` secret, none of whose variables is set.
const SECRETS_FROM_UNSET_VARIABLES: &str = r#"
[api]
tokens_env = "UNSET_TOKENS"

[[source]]
name = "school"
provider = "dreamclass"
secret_env = "UNSET_SCHOOL_SECRET"
basic_auth = { username = "dc", password_env = "UNSET_SCHOOL_PASSWORD" }

[[subscription]]
name = "crm"
url = "https://crm.example.com/hook"
events = ["*"]
secret_env = "UNSET_CRM_SECRET"
basic_auth = { username = "c", password_env = "UNSET_CRM_PASSWORD" }
"#;

#[test]
fn skipping_secrets_loads_without_their_variables_and_checks_the_rest() {
    let err = parse(SECRETS_FROM_UNSET_VARIABLES, &[]).unwrap_err();
    assert!(err.to_string().contains("UNSET_SCHOOL_SECRET"), "{err}");

    let skip = |text: &str| {
        Config::from_toml_str_with(Path::new("test.toml"), text, &[], &|_| None, Secrets::Skip)
    };
    let config = skip(SECRETS_FROM_UNSET_VARIABLES).unwrap();
    assert_eq!(config.secrets, Secrets::Skip);
    let school = config.source("school").unwrap();
    assert!(school.secret.is_none() && school.signing_key.is_none());
    assert!(config.api.tokens.is_empty());
    assert_eq!(config.subscriptions[0].name, "crm");

    // Only the secrets are skipped: every other rule still holds.
    let bad = SECRETS_FROM_UNSET_VARIABLES.replace("name = \"school\"", "name = \"a b\"");
    assert_eq!(skip(&bad).unwrap_err().key, "source[0].name");
}

#[test]
fn a_relative_data_dir_is_taken_from_the_config_files_directory() {
    let load = |data_dir: &str, vars: &[(String, String)]| {
        Config::from_toml_str(
            Path::new("/etc/classhook/classhook.toml"),
            &format!("[server]\ndata_dir = {data_dir:?}\n"),
            vars,
            &|_| None,
        )
        .unwrap()
        .server
        .data_dir
    };
    assert_eq!(load("data", &[]), Path::new("/etc/classhook/data"));
    assert_eq!(load("../var", &[]), Path::new("/etc/classhook/../var"));
    assert_eq!(
        load("/var/lib/classhook", &[]),
        Path::new("/var/lib/classhook")
    );
    let from_env = [(
        "CLASSHOOK_SERVER_DATA_DIR".to_string(),
        "env-data".to_string(),
    )];
    assert_eq!(
        load("data", &from_env),
        Path::new("/etc/classhook/env-data")
    );
}

#[test]
fn listen_takes_a_host_name() {
    let config = parse("[server]\nlisten = \"localhost:8080\"\n", &[]).unwrap();
    assert!(
        config.server.listen.ip().is_loopback(),
        "{}",
        config.server.listen
    );
    assert_eq!(config.server.listen.port(), 8080);
    let config = parse("", &[("CLASSHOOK_SERVER_LISTEN", "localhost:9")]).unwrap();
    assert_eq!(config.server.listen.port(), 9);
    let bad = error_of("[server]\nlisten = \"no-such-host.invalid:80\"\n", &[]);
    assert!(bad.starts_with("test.toml: server.listen:"), "{bad}");
}

fn with_env(text: &str, env: &[(&str, &str)], secrets: Secrets) -> Result<Config, ConfigError> {
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let lookup = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    Config::from_toml_str_with(Path::new("test.toml"), text, &[], &lookup, secrets)
}

#[test]
fn the_secret_key_comes_from_the_environment() {
    use crate::store::sealed::SecretKey;
    let (current, previous) = (SecretKey::generate(), SecretKey::generate());
    let (current_text, previous_text) = (current.to_base64(), previous.to_base64());

    // Without a key: plain text (serve warns), not an error.
    let config = with_env("", &[], Secrets::Resolve).unwrap();
    assert!(config.server.secret_keys.writes_plain_text());

    let config = with_env(
        "",
        &[
            ("CLASSHOOK_SECRET_KEY", &current_text),
            ("CLASSHOOK_SECRET_KEY_PREVIOUS", &previous_text),
        ],
        Secrets::Resolve,
    )
    .unwrap();
    assert_eq!(config.server.secret_keys.current_key(), Some(current.id()));
    let shown = format!("{config:?}");
    assert!(!shown.contains(&current_text) && !shown.contains(&previous_text));

    // Other names, from the file or an override.
    let text = "[server]\nsecret_key_env = \"MY_KEY\"\n";
    let config = with_env(text, &[("MY_KEY", &current_text)], Secrets::Resolve).unwrap();
    assert_eq!(config.server.secret_keys.current_key(), Some(current.id()));
    let error = with_env(text, &[], Secrets::Resolve).unwrap_err();
    assert_eq!(
        error.to_string(),
        "test.toml: server.secret_key_env: environment variable MY_KEY is not set"
    );

    // Commands that skip secrets do not read the key at all.
    let config = with_env("", &[("CLASSHOOK_SECRET_KEY", "bad")], Secrets::Skip).unwrap();
    assert!(config.server.secret_keys.current_key().is_none());
    assert!(!config.server.secret_keys.writes_plain_text());
}

#[test]
fn a_bad_secret_key_is_one_line_without_the_value() {
    let short = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [7u8; 16]);
    for (env, key, expected) in [
        (
            vec![("CLASSHOOK_SECRET_KEY", short.as_str())],
            "server.secret_key_env",
            "CLASSHOOK_SECRET_KEY decodes to 16 bytes, but a key is 32",
        ),
        (
            vec![("CLASSHOOK_SECRET_KEY", "hunter2-is-not-base64!")],
            "server.secret_key_env",
            "CLASSHOOK_SECRET_KEY is not base64",
        ),
        (
            vec![("CLASSHOOK_SECRET_KEY", "")],
            "server.secret_key_env",
            "CLASSHOOK_SECRET_KEY is empty",
        ),
        (
            vec![("CLASSHOOK_SECRET_KEY_PREVIOUS", short.as_str())],
            "server.previous_secret_key_env",
            "CLASSHOOK_SECRET_KEY_PREVIOUS decodes to 16 bytes",
        ),
    ] {
        let error = with_env("", &env, Secrets::Resolve).unwrap_err();
        let message = error.to_string();
        assert_eq!(error.key, key, "{message}");
        assert!(message.contains(expected), "{message}");
        assert!(!message.contains('\n'), "{message}");
        assert!(!message.contains(&short) && !message.contains("hunter2"));
    }
    // A previous key alone cannot be right: the new one is missing.
    let key = crate::store::sealed::SecretKey::generate().to_base64();
    let error = with_env(
        "",
        &[("CLASSHOOK_SECRET_KEY_PREVIOUS", &key)],
        Secrets::Resolve,
    )
    .unwrap_err();
    assert!(
        error.to_string().contains("CLASSHOOK_SECRET_KEY is not"),
        "{error}"
    );
}

#[test]
fn errors_in_a_list_entry_name_the_entry() {
    let text = "[[source]]\nname = \"first\"\nprovider = \"dreamclass\"\n\n\
                [[source]]\nname = \"school\"\nprovider = \"dreamclass\"\nsecret_env = \"NOPE\"\n";
    let error = parse(text, &[]).unwrap_err();
    assert_eq!(error.key, "source[1].secret_env");
    assert_eq!(error.named.as_deref(), Some("source \"school\""));
    assert!(
        error
            .to_string()
            .starts_with("test.toml: source[1].secret_env (in source \"school\"): "),
        "{error}"
    );
    let subscription = "[[subscription]]\nname = \"crm\"\nurl = \"https://crm.example.com\"\n\
                        events = [\"*\"]\nmax_in_flight = 0\n";
    let error = parse(subscription, &[]).unwrap_err();
    assert!(
        error.to_string().contains("(in subscription \"crm\")"),
        "{error}"
    );
    // An entry without a name keeps its position only.
    let nameless = parse("[[source]]\nprovider = \"dreamclass\"\n", &[]).unwrap_err();
    assert_eq!(nameless.named, None, "{nameless}");
}

#[test]
fn telemetry_is_off_by_default_and_set_from_the_file_or_the_environment() {
    let off = parse("", &[]).unwrap().telemetry;
    assert!(off.traces_url.is_none(), "tracing is off unless asked for");
    assert_eq!(off.service_name, "classhook");
    assert_eq!(off.sample_ratio, 1.0);

    let file = "[telemetry]\notlp_endpoint = \"http://collector:4318\"\n";
    let on = parse(file, &[]).unwrap().telemetry;
    assert_eq!(
        on.traces_url.unwrap().as_str(),
        "http://collector:4318/v1/traces"
    );

    let from_env = parse(
        "",
        &[
            (
                "CLASSHOOK_TELEMETRY_OTLP_ENDPOINT",
                "https://otel.internal/",
            ),
            ("CLASSHOOK_TELEMETRY_SERVICE_NAME", "classhook-eu"),
            ("CLASSHOOK_TELEMETRY_SAMPLE_RATIO", "0.25"),
        ],
    )
    .unwrap()
    .telemetry;
    assert_eq!(
        from_env.traces_url.unwrap().as_str(),
        "https://otel.internal/v1/traces"
    );
    assert_eq!(from_env.service_name, "classhook-eu");
    assert_eq!(from_env.sample_ratio, 0.25);

    let turned_off = parse(file, &[("CLASSHOOK_TELEMETRY_OTLP_ENDPOINT", "")]).unwrap();
    assert!(
        turned_off.telemetry.traces_url.is_none(),
        "an empty override turns tracing off"
    );
}

#[test]
fn bad_telemetry_settings_name_the_key_and_never_show_credentials() {
    let credentials = error_of(
        "[telemetry]\notlp_endpoint = \"http://user:hunter2@collector:4318\"\n",
        &[],
    );
    assert!(
        credentials.starts_with("test.toml: telemetry.otlp_endpoint:"),
        "{credentials}"
    );
    assert!(!credentials.contains("hunter2"), "{credentials}");
    let ratio = error_of("[telemetry]\nsample_ratio = 2\n", &[]);
    assert!(
        ratio.starts_with("test.toml: telemetry.sample_ratio:"),
        "{ratio}"
    );
    let typo = error_of("", &[("CLASSHOOK_TELEMETRY_ENDPOINT", "http://c:4318")]);
    assert!(typo.contains("unknown override"), "{typo}");
}
