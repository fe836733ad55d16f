//! Settings layering, validation and the announced limits, checked without a server.

use super::*;

fn load(file: Option<&Path>, vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
    load_with(file, vars, &CliOverrides::default())
}

fn load_with(
    file: Option<&Path>,
    vars: &[(&str, &str)],
    flags: &CliOverrides,
) -> Result<Settings, ConfigError> {
    let env = vars.iter().map(|(k, v)| (k.to_string(), v.to_string()));
    Settings::load(file, env, flags)
}

fn toml_file(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("ferry.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn defaults_match_the_decisions() {
    let s = load(None, &[]).unwrap();
    assert_eq!(s, Settings::default());
    assert_eq!(s.listen.to_string(), "127.0.0.1:4433");
    let l = s.limits_frame();
    let frame_body_inflight = (l.max_frame_size, l.max_body_size, l.max_inflight_sends);
    assert_eq!(frame_body_inflight, (1_048_576, 65_536, 256));
    let rate_burst_window = (l.send_rate_per_sec, l.send_burst, l.recent_window);
    assert_eq!(rate_burst_window, (1000, 2000, 50));
    assert_eq!(
        (l.idle_timeout_ms, s.heartbeat_interval_ms),
        (75_000, 25_000)
    );
    assert_eq!(s.initial_window_packets, 32);
    let rfc = load(None, &[("FERRY_INITIAL_WINDOW_PACKETS", "10")]).unwrap();
    assert_eq!(rfc.initial_window_packets, 10);
}

#[test]
fn partial_toml_keeps_other_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let text = "node_id = \"n7\"\nlogin_policy = \"one-per-class\"\n[limits]\nmax_pull_page = 20\n";
    let s = load(Some(&toml_file(dir.path(), text)), &[]).unwrap();
    assert_eq!(s.node_id, "n7");
    assert_eq!(s.login_policy, LoginPolicy::OnePerClass);
    assert_eq!(s.limits.max_pull_page, 20);
    assert_eq!(s.limits.max_sync_page, 100);
    assert_eq!(s.listen, Settings::default().listen);
}

#[test]
fn env_overrides_toml_and_flags_override_env() {
    let dir = tempfile::tempdir().unwrap();
    let text = "listen = \"127.0.0.1:1000\"\nhttp = \"127.0.0.1:1001\"\n[limits]\nmax_inflight_sends = 7\n";
    let file = toml_file(dir.path(), text);
    let vars = [
        ("FERRY_LISTEN", "127.0.0.1:2000"),
        ("FERRY_LIMITS_MAX_INFLIGHT_SENDS", "9"),
        ("FERRY_LOG_FORMAT", "json"),
        ("FERRY_IDLE_TIMEOUT_MS", "90000"),
        ("FERRY_SERVER_ADDR", "ignored: not a server setting"),
    ];
    let s = load(Some(&file), &vars).unwrap();
    assert_eq!((s.listen.port(), s.http.port()), (2000, 1001));
    assert_eq!(s.limits.max_inflight_sends, 9);
    assert_eq!(s.log_format, LogFormat::Json);
    assert_eq!(s.limits_frame().idle_timeout_ms, 90_000);

    let flags = CliOverrides {
        listen: Some("127.0.0.1:3000".into()),
        log_format: Some("text".into()),
        ..CliOverrides::default()
    };
    let s = load_with(Some(&file), &vars, &flags).unwrap();
    assert_eq!((s.listen.port(), s.http.port()), (3000, 1001));
    assert_eq!(s.log_format, LogFormat::Text);
    assert_eq!(s.limits.max_inflight_sends, 9);
}

#[test]
fn unknown_toml_key_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = toml_file(dir.path(), "[limits]\nmax_inflight = 5\n");
    let err = load(Some(&file), &[]).unwrap_err();
    assert!(matches!(err, ConfigError::Toml { .. }));
    assert!(err.to_string().contains("max_inflight"), "{err}");
}

#[test]
fn bad_values_name_their_origin() {
    let err = load(None, &[("FERRY_LIMITS_SEND_BURST", "lots")]).unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with("FERRY_LIMITS_SEND_BURST: invalid value \"lots\""),
        "{text}"
    );
    let err = load(None, &[("FERRY_LOGIN_POLICY", "some")]).unwrap_err();
    assert!(err.to_string().starts_with("FERRY_LOGIN_POLICY: "), "{err}");
    let flags = CliOverrides {
        http: Some("localhost".into()),
        ..CliOverrides::default()
    };
    let err = load_with(None, &[], &flags).unwrap_err();
    assert!(err.to_string().starts_with("--http: "), "{err}");
}

#[test]
fn inconsistent_settings_are_rejected() {
    let cases = [
        ("FERRY_CERT", "/c.pem"),
        ("FERRY_NODE_ID", "node 1"),
        ("FERRY_LIMITS_MAX_BODY_SIZE", "2000000"),
        ("FERRY_HEARTBEAT_INTERVAL_MS", "80000"),
        ("FERRY_LIMITS_MAX_PULL_PAGE", "0"),
        ("FERRY_INITIAL_WINDOW_PACKETS", "1"),
        ("FERRY_INITIAL_WINDOW_PACKETS", "1001"),
    ];
    for var in cases {
        let err = load(None, &[var]).unwrap_err();
        assert!(matches!(err, ConfigError::Invalid(_)), "{var:?}: {err}");
    }
}
