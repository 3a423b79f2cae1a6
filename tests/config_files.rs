//! Every shipped config file loads; bad configs are refused with every
//! problem and its key path.

mod common {
    pub mod tls;
}

use std::path::{Path, PathBuf};
use std::time::Duration;

use sipadmit::classify::Catalog;
use sipadmit::config::{Config, ConfigError, Identity, Overrides, TlsVersion};

fn config_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config")
}

fn load_str(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml_str(text, &config_dir().join("test.toml"), &Overrides::default())
}

/// Every TOML file in config/ (the service unit and the logrotate file
/// there are checked by tests/packaging.rs).
#[test]
fn every_file_in_config_loads() {
    let mut loaded = 0;
    for entry in std::fs::read_dir(config_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        match path.file_name().unwrap().to_str().unwrap() {
            "clients.toml" => {
                Catalog::load(&path).unwrap_or_else(|e| panic!("{e}"));
            }
            _ => {
                Config::load(&path, &Overrides::default()).unwrap_or_else(|e| panic!("{e}"));
            }
        }
        loaded += 1;
    }
    assert!(loaded >= 2);
}

#[test]
fn settings_hold_the_restart_keys_and_runtime_the_swappable_ones() {
    fn swappable<T: Send + Sync + 'static>() {}
    swappable::<sipadmit::config::RuntimeConfig>();
    let c = Config::load(&config_dir().join("sipadmit.toml"), &Overrides::default()).unwrap();
    let sipadmit::config::Settings {
        listen,
        upstream,
        upstream_sources,
        decision_log,
        flow_secrets,
        advertise,
        upstream_probe,
        workers,
        limits,
        tls,
        rate_limit,
        admin,
        admin_allow_remote,
        hep,
    } = &c.settings;
    // Not set in the shipped file: one per core.
    assert_eq!(
        *workers,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    assert_eq!(listen.len(), 2);
    assert_eq!(upstream.unwrap().to_string(), "udp:127.0.0.1:5070");
    assert!(upstream_sources.matches("127.0.0.1:5070".parse().unwrap()));
    assert_eq!((decision_log.as_str(), flow_secrets), ("-", &None));
    assert!(advertise.is_empty());
    assert_eq!(upstream_probe.map(|p| p.as_secs()), Some(5));
    assert_eq!(limits.max_headers, 256);
    assert_eq!(tls, &sipadmit::config::TlsSettings::default());
    assert_eq!(limits.message_deadline.as_secs(), 10);
    assert_eq!(rate_limit.ban.map(|b| b.as_secs()), Some(300));
    assert_eq!(rate_limit.over_limit, sipadmit::config::OverLimit::Reject);
    // The shipped config opens the admin listener on loopback only.
    assert!(admin.is_some_and(|a| a.ip().is_loopback()), "{admin:?}");
    assert!(!admin_allow_remote);
    // HEP export is off in the shipped config (no collector).
    assert_eq!(hep.exporting_to(), None);
    let sipadmit::config::RuntimeConfig {
        catalog_source,
        sessions,
        flag_header,
        ..
    } = &c.runtime;
    assert_eq!(
        catalog_source, "built-in",
        "the shipped file works wherever it is copied"
    );
    assert_eq!(sessions.workflows.len(), 2);
    assert_eq!(flag_header, "X-Sipadmit");
}

/// The keys the reader knows in `[section]`, as its unknown-key problem lists them.
fn known_keys(section: &str) -> Vec<String> {
    let err = load_str(&format!("[{section}]\nnot_a_key = 1\n")).unwrap_err();
    let text = err.to_string();
    let list = text
        .split_once("unknown key (known: ")
        .and_then(|(_, rest)| rest.split_once(')'))
        .unwrap_or_else(|| panic!("no known-key list in {text}"))
        .0;
    list.split(", ").map(str::to_owned).collect()
}

#[test]
fn every_key_is_documented_in_the_shipped_config() {
    let shipped = std::fs::read_to_string(config_dir().join("sipadmit.toml")).unwrap();
    let documented = |key: &str| {
        shipped.lines().any(|line| {
            let line = line.trim_start_matches(['#', ' ']);
            line.strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
    };
    let roles = ["caller", "agent_offer", "agent_registration"];
    let mut checked = 0;
    for section in [
        "proxy",
        "limits",
        "catalog",
        "response_group",
        "policy",
        "tls",
        "admin",
        "hep",
    ]
    .into_iter()
    .map(str::to_owned)
    .chain(roles.iter().map(|r| format!("policy.{r}")))
    {
        assert!(shipped.contains(&format!("[{section}]")), "[{section}]");
        for key in known_keys(&section) {
            if section == "policy" && roles.contains(&key.as_str()) {
                continue;
            }
            assert!(
                documented(&key),
                "{section}.{key} is not in config/sipadmit.toml"
            );
            checked += 1;
        }
    }
    assert!(checked >= 40, "{checked}");
}

/// docs/configuration.md, the configuration reference, names every key
/// the reader knows, in the part of the page headed by the key's section
/// (`### `[section]``; the `[policy.<role>]` keys under `[policy]`'s).
#[test]
fn every_key_is_in_the_configuration_reference() {
    let page = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/configuration.md"),
    )
    .unwrap();
    let part = |section: &str| -> &str {
        let heading = format!("\n### `[{section}]`");
        let start = page
            .find(&heading)
            .unwrap_or_else(|| panic!("no {heading:?} heading in docs/configuration.md"));
        let rest = &page[start + heading.len()..];
        &rest[..rest.find("\n#").unwrap_or(rest.len())]
    };
    let roles = ["caller", "agent_offer", "agent_registration"];
    let mut checked = 0;
    for section in [
        "proxy",
        "limits",
        "rate_limit",
        "catalog",
        "response_group",
        "policy",
        "tls",
        "admin",
    ]
    .into_iter()
    .map(str::to_owned)
    .chain(roles.iter().map(|r| format!("policy.{r}")))
    {
        let text = part(section.split('.').next().unwrap());
        for key in known_keys(&section) {
            if section == "policy" && roles.contains(&key.as_str()) {
                continue;
            }
            assert!(
                text.contains(&format!("`{key}`")),
                "{section}.{key} is not in docs/configuration.md under [{section}]"
            );
            checked += 1;
        }
    }
    assert!(checked >= 50, "{checked}");
}

/// The README's minimal configuration (the TOML block after its marker)
/// loads as it stands, and says what the README says it does.
#[test]
fn the_readme_minimal_configuration_loads() {
    const MARKER: &str = "<!-- minimal-config: tests/config_files.rs loads this block -->";
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let block = readme
        .split_once(MARKER)
        .unwrap_or_else(|| panic!("no {MARKER} in README.md"))
        .1
        .split_once("```toml\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .expect("a ```toml block after the marker")
        .0;
    let c = load_str(block).unwrap_or_else(|e| panic!("{e}\n{block}"));
    let names: Vec<String> = c.settings.listen.iter().map(ToString::to_string).collect();
    assert_eq!(names, ["udp:192.0.2.10:5060", "tcp:192.0.2.10:5060"]);
    assert_eq!(
        c.settings.upstream.unwrap().to_string(),
        "udp:192.0.2.20:5060"
    );
    assert_eq!(c.settings.decision_log, "/var/log/sipadmit/decisions.log");
    assert!(c.settings.admin.is_some_and(|a| a.ip().is_loopback()));
    assert_eq!(c.runtime.policy.mode, sipadmit::policy::Mode::Monitor);
    assert_eq!(c.runtime.sessions.workflows.len(), 1);
    assert_eq!(c.runtime.catalog_source, "built-in");
}

#[test]
fn hep_problems_name_the_file_the_key_and_the_value() {
    let err = load_str(
        "[hep]\ncollector = \"sctp:192.0.2.50:9060\"\ncapture_id = -1\nauth_key = \"\"\nmirror = \"some\"\nzone = 1\n",
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with(&config_dir().join("test.toml").display().to_string()),
        "{text}"
    );
    for wanted in [
        "hep.zone: unknown key (known: collector, capture_id, auth_key, mirror)",
        "hep.capture_id: expected an integer from 0 to 4294967295, got -1",
        "hep.collector: \"sctp:192.0.2.50:9060\" is not udp:IP:PORT or tcp:IP:PORT",
        "hep.auth_key: an empty key",
        "hep.mirror: \"some\": expected \"none\", \"decisions\" or \"all\"",
    ] {
        assert!(text.contains(wanted), "{wanted} not in {text}");
    }
    let ok = load_str("[hep]\ncollector = \"tcp:[::1]:9061\"\ncapture_id = 4294967295\n").unwrap();
    assert_eq!(
        ok.settings.hep.exporting_to().unwrap().to_string(),
        "tcp:[::1]:9061"
    );
    assert_eq!(ok.settings.hep.capture_id, u32::MAX);
    assert_eq!(ok.settings.hep.mirror, sipadmit::config::Mirror::All);
}

#[test]
fn response_group_keys_alone_are_enough() {
    let c = load_str(
        "[response_group]\nworkflows = [\"sip:helpdesk@contoso.com\"]\napplication_user_agents = [\"Response_Group_Service\"]\n",
    )
    .unwrap();
    assert_eq!(c.runtime.catalog_source, "built-in");
    assert_eq!(c.runtime.policy.agent_offer.reply.status, 480);
    assert_eq!(c.runtime.policy.caller.reply.status, 403);
    assert!(c.settings.upstream.is_none());
}

#[test]
fn unknown_keys_are_refused_with_their_path() {
    let err = load_str("[response_group]\nworkflowz = []\n").unwrap_err();
    let text = err.to_string();
    assert!(text.contains("response_group.workflowz"), "{text}");
    let err = load_str("[policy.agent_offer]\nstatuss = 480\n").unwrap_err();
    assert!(
        err.to_string().contains("policy.agent_offer.statuss"),
        "{err}"
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let err = load_str(
        r#"
[proxy]
listen = ["udp:127.0.0.1:5060", "sctp:1.2.3.4:5"]
upstream = "udp:nowhere"
flow_secret = "short"
[response_group]
workflows = ["sip:ok@contoso.com", "sip:also@contoso.com", "helpdesk"]
application_sources = ["10.0.0.0/40"]
[policy.agent_offer]
status = 603
[policy.caller]
headers = ["no colon here"]
"#,
    )
    .unwrap_err();
    let ConfigError::Invalid { problems, .. } = &err else {
        panic!("expected Invalid, got {err}");
    };
    let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
    for key in [
        "proxy.listen[1]",
        "proxy.upstream",
        "proxy.flow_secret",
        "response_group.workflows[2]",
        "response_group.application_sources[0]",
        "policy.agent_offer.status",
        "policy.caller.headers[0]",
    ] {
        assert!(keys.contains(&key), "missing {key} in {keys:?}");
    }
    let text = err.to_string();
    assert!(text.contains("test.toml"), "names the file: {text}");
    assert!(text.contains("\"helpdesk\""), "names the value: {text}");
    assert!(
        text.contains("RFC 3261 16.7"),
        "explains the 6xx ban: {text}"
    );
}

fn problem_keys(err: &ConfigError) -> Vec<&str> {
    let ConfigError::Invalid { problems, .. } = err else {
        panic!("expected Invalid, got {err}");
    };
    problems.iter().map(|p| p.key.as_str()).collect()
}

#[test]
fn an_unknown_key_and_an_invalid_value_are_both_reported() {
    let err = load_str(
        "[response_group]\nworkflowz = []\nworkflows = [\"helpdesk\"]\n[proxy]\nlisen = []\n",
    )
    .unwrap_err();
    assert_eq!(
        problem_keys(&err),
        [
            "proxy.lisen",
            "response_group.workflowz",
            "response_group.workflows[0]"
        ]
    );
    let text = err.to_string();
    assert!(
        text.contains("proxy.lisen: unknown key (known: listen, upstream,"),
        "{text}"
    );
    assert!(
        text.contains("response_group.workflows[0]: not a SIP URI: \"helpdesk\""),
        "{text}"
    );
}

#[test]
fn wrong_typed_values_are_reported_together_with_invalid_ones() {
    let err = load_str(
        r#"
[proxy]
listen = "udp:127.0.0.1:5060"
flow_secret = "short"
[limits]
max_headers = "lots"
tcp_idle_timeout_secs = 1.5
max_connections = 0
[policy]
scanner = "ignore"
"#,
    )
    .unwrap_err();
    assert_eq!(
        problem_keys(&err),
        [
            "proxy.listen",
            "limits.max_headers",
            "limits.tcp_idle_timeout_secs",
            "policy.scanner",
            "proxy.flow_secret",
            "limits.max_connections",
        ]
    );
    let text = err.to_string();
    assert!(
        text.contains("limits.max_headers: expected a non-negative integer, got \"lots\""),
        "{text}"
    );
    assert!(text.contains("6 problem(s)"), "{text}");
}

#[test]
fn duplicate_and_overlapping_listeners_are_refused() {
    let err = load_str(
        r#"
[proxy]
listen = [
    "udp:0.0.0.0:5060",
    "udp:127.0.0.1:5060",
    "tcp:127.0.0.1:5060",
    "tcp:127.0.0.1:5060",
    "tcp:[::]:5062",
    "tcp:127.0.0.1:5062",
    "udp:[::1]:5060",
]
"#,
    )
    .unwrap_err();
    assert_eq!(
        problem_keys(&err),
        ["proxy.listen[1]", "proxy.listen[3]", "proxy.listen[5]"]
    );
    let text = err.to_string();
    assert!(
        text.contains(
            "proxy.listen[1]: udp:127.0.0.1:5060 overlaps proxy.listen[0] (udp:0.0.0.0:5060)"
        ),
        "{text}"
    );
    assert!(text.contains("Address already in use"), "{text}");

    // Different transports, addresses or ports, and port 0, are fine.
    load_str(
        r#"
[proxy]
listen = ["udp:127.0.0.1:5060", "tcp:127.0.0.1:5060", "udp:127.0.0.2:5060",
          "udp:0.0.0.0:5061", "udp:127.0.0.1:0", "udp:127.0.0.1:0"]
"#,
    )
    .unwrap();
}

#[test]
fn command_line_values_are_named_by_their_flag() {
    let err = Config::from_toml_str(
        "[proxy]\nlisten = [\"udp:127.0.0.1:5060\"]\nupstream = \"udp:127.0.0.1:5070\"\n",
        &config_dir().join("x.toml"),
        &Overrides {
            listen: vec!["udp:127.0.0.1:0".into(), "sctp:127.0.0.1:5061".into()],
            upstream: Some("udp:nowhere".into()),
            mode: None,
            decision_log: Some(" ".into()),
            admin: Some("localhost:9464".into()),
        },
    )
    .unwrap_err();
    assert_eq!(
        problem_keys(&err),
        ["--listen[1]", "--upstream", "--decision-log", "--admin"]
    );
    // The file's own problems keep their key paths.
    let err = Config::from_toml_str(
        "[proxy]\nlisten = [\"udp:x\"]\n",
        &config_dir().join("x.toml"),
        &Overrides {
            upstream: Some("udp:nowhere".into()),
            ..Overrides::default()
        },
    )
    .unwrap_err();
    assert_eq!(problem_keys(&err), ["proxy.listen[0]", "--upstream"]);
}

#[test]
fn upstream_sources_default_to_the_upstream_address_and_are_checked() {
    let upstream_only = Overrides {
        upstream: Some("tcp:127.0.0.1:5070".into()),
        ..Overrides::default()
    };
    let c = Config::from_toml_str("", &config_dir().join("x.toml"), &upstream_only).unwrap();
    let sources = &c.settings.upstream_sources;
    assert!(sources.matches("127.0.0.1:5070".parse().unwrap()));
    assert!(!sources.matches("127.0.0.1:40000".parse().unwrap()));
    // Its hosts (exempt from rate limits and bans with a tcp:/tls:
    // registrar, whose own connections come from ports it picks).
    let hosts = sources.hosts();
    assert!(hosts.matches("127.0.0.1:40000".parse().unwrap()));
    assert!(hosts.matches("[::ffff:127.0.0.1]:40000".parse().unwrap()));
    assert!(!hosts.matches("127.0.0.2:5070".parse().unwrap()));
    assert!(load_str("")
        .unwrap()
        .settings
        .upstream_sources
        .patterns()
        .is_empty());

    let c = Config::from_toml_str(
        "[proxy]\nupstream_sources = [\"10.0.0.0/24\", \"192.0.2.7\", \"[2001:db8::7]:5060\"]\n",
        &config_dir().join("x.toml"),
        &upstream_only,
    )
    .unwrap();
    let sources = &c.settings.upstream_sources;
    assert!(sources.matches("10.0.0.9:5060".parse().unwrap()));
    assert!(sources.matches("192.0.2.7:1234".parse().unwrap()));
    assert!(sources.matches("[2001:db8::7]:5060".parse().unwrap()));
    // The list replaces the default.
    assert!(!sources.matches("127.0.0.1:5070".parse().unwrap()));

    let err = load_str(
        "[proxy]\nupstream_sources = [\"10.0.0.0/24\", \"registrar.example.com\", \"192.0.2.7:0\"]\n",
    )
    .unwrap_err();
    assert_eq!(
        problem_keys(&err),
        ["proxy.upstream_sources[1]", "proxy.upstream_sources[2]"]
    );
    assert!(
        err.to_string().contains("\"registrar.example.com\""),
        "{err}"
    );
    let err = load_str("[proxy]\nupstream_sources = []\n").unwrap_err();
    assert_eq!(problem_keys(&err), ["proxy.upstream_sources"]);
    let err = load_str("[proxy]\nupstream_sources = \"10.0.0.1\"\n").unwrap_err();
    assert!(
        err.to_string()
            .contains("proxy.upstream_sources: expected an array of strings"),
        "{err}"
    );
}

#[test]
fn a_broken_catalog_is_reported_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("clients.toml"),
        "[[clients]]\nid = \"x\"\nname = \"X\"\ncategory = \"desktop\"\nsupport = \"supported\"\nroles = []\n[[clients.match]]\nregex = \"(\"\n",
    )
    .unwrap();
    let cfg = dir.path().join("sipadmit.toml");
    std::fs::write(&cfg, "[catalog]\npath = \"clients.toml\"\n").unwrap();
    let err = Config::load(&cfg, &Overrides::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("clients[0]"), "{err}");
}

#[test]
fn overrides_replace_file_values() {
    let c = Config::from_toml_str(
        "",
        &config_dir().join("x.toml"),
        &Overrides {
            listen: vec!["udp:[::1]:0".into(), "tcp:127.0.0.1:0".into()],
            upstream: Some("tcp:127.0.0.1:5070".into()),
            mode: Some(sipadmit::policy::Mode::Monitor),
            decision_log: Some("/tmp/d.jsonl".into()),
            admin: Some("[::1]:0".into()),
        },
    )
    .unwrap();
    assert_eq!(c.settings.admin, Some("[::1]:0".parse().unwrap()));
    assert_eq!(c.settings.listen.len(), 2);
    assert!(c.settings.listen[0].addr.is_ipv6());
    assert_eq!(
        c.settings.upstream.unwrap().to_string(),
        "tcp:127.0.0.1:5070"
    );
    assert_eq!(c.runtime.policy.mode, sipadmit::policy::Mode::Monitor);
}

#[test]
fn tls_files_are_taken_relative_to_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let files = common::tls::Pki::get().write(dir.path());
    let cfg = dir.path().join("sipadmit.toml");
    std::fs::write(
        &cfg,
        r#"
[tls]
certificate = "server.pem"
private_key = "server.key"
client_ca = "ca.pem"
min_version = "1.0"
ciphers = "DEFAULT:@SECLEVEL=0"
upstream_ca = "ca.pem"
upstream_server_name = "pool01.contoso.com"
upstream_certificate = "client.pem"
upstream_private_key = "client.key"
handshake_timeout_secs = 5
"#,
    )
    .unwrap();
    let tls = Config::load(&cfg, &Overrides::default())
        .unwrap_or_else(|e| panic!("{e}"))
        .settings
        .tls;
    let identity = |pair: &(PathBuf, PathBuf)| Identity {
        certificate: pair.0.clone(),
        private_key: pair.1.clone(),
    };
    assert_eq!(tls.identity, Some(identity(&files.server)));
    assert_eq!(tls.client_ca.as_deref(), Some(files.ca.as_path()));
    assert_eq!(tls.min_version, TlsVersion::Tls1_0);
    assert_eq!(tls.ciphers, "DEFAULT:@SECLEVEL=0");
    assert_eq!(tls.upstream_ca.as_deref(), Some(files.ca.as_path()));
    assert_eq!(
        tls.upstream_server_name.as_deref(),
        Some("pool01.contoso.com")
    );
    assert_eq!(tls.upstream_identity, Some(identity(&files.client)));
    assert_eq!(tls.handshake_timeout, Duration::from_secs(5));
}

#[test]
fn every_tls_problem_is_reported_with_its_key_path() {
    let dir = tempfile::tempdir().unwrap();
    common::tls::Pki::get().write(dir.path());
    let load = |tls: &str| {
        let cfg = dir.path().join("sipadmit.toml");
        std::fs::write(&cfg, format!("[tls]\n{tls}")).unwrap();
        Config::load(&cfg, &Overrides::default()).unwrap_err()
    };

    // Values, and the files beside them.
    let err = load(
        r#"
certificate = "missing.pem"
private_key = "ca.pem"
client_ca = "server.key"
min_version = "1.4"
ciphers = ""
upstream_server_name = "pool 01"
upstream_certificate = "client.pem"
handshake_timeout_secs = 0
"#,
    );
    assert_eq!(
        problem_keys(&err),
        [
            "tls.upstream_private_key",
            "tls.min_version",
            "tls.ciphers",
            "tls.upstream_server_name",
            "tls.handshake_timeout_secs",
            "tls.certificate",
            "tls.private_key",
            "tls.client_ca",
        ]
    );
    let text = err.to_string();
    for needle in [
        "tls.upstream_private_key: missing: tls.upstream_certificate is set",
        "tls.min_version: unknown TLS version \"1.4\"",
        "missing.pem: cannot read: ",
        "ca.pem: not a PEM private key",
        "server.key: no PEM CA certificate in the file",
        "\"pool 01\"",
    ] {
        assert!(text.contains(needle), "{needle:?} in {text}");
    }

    // A key that belongs to another certificate, an unknown cipher, a legacy
    // version at OpenSSL's default security level, a key without certificate.
    let err = load(
        r#"
upstream_certificate = "client.pem"
upstream_private_key = "server.key"
ciphers = "NO-SUCH-CIPHER"
private_key = "server.key"
"#,
    );
    assert_eq!(
        problem_keys(&err),
        ["tls.certificate", "tls.ciphers", "tls.upstream_private_key"]
    );
    let text = err.to_string();
    assert!(
        text.contains("server.key: does not belong to the certificate in tls.upstream_certificate"),
        "{text}"
    );
    assert!(
        text.contains("OpenSSL accepts no cipher in \"NO-SUCH-CIPHER\""),
        "{text}"
    );

    let err = load("min_version = \"1.1\"\nciphers = \"DEFAULT\"\n");
    assert_eq!(problem_keys(&err), ["tls.min_version"]);
    assert!(err.to_string().contains("@SECLEVEL=0"), "{err}");
}

#[test]
fn a_tls_listener_without_certificate_is_a_problem_naming_the_listener() {
    let overrides = |listen: &[&str]| Overrides {
        listen: listen.iter().map(|l| l.to_string()).collect(),
        upstream: Some("tls:[::1]:5071".into()),
        ..Overrides::default()
    };
    let err = Config::from_toml_str(
        "",
        &config_dir().join("x.toml"),
        &overrides(&["udp:127.0.0.1:5060", "tls:[::1]:5061"]),
    )
    .unwrap_err();
    assert_eq!(problem_keys(&err), ["tls.certificate", "tls.private_key"]);
    assert!(
        err.to_string().contains("--listen[1] is a tls: listener"),
        "{err}"
    );
    // A tls: upstream without a tls: listener: the registrar's requests
    // could not come back.
    let err = Config::from_toml_str(
        "",
        &config_dir().join("x.toml"),
        &overrides(&["udp:127.0.0.1:5060"]),
    )
    .unwrap_err();
    assert_eq!(problem_keys(&err), ["--upstream"]);
}

#[test]
fn a_reload_names_the_restart_only_settings_that_changed() {
    let load = |text: &str| {
        Config::from_toml_str(text, &config_dir().join("x.toml"), &Overrides::default())
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let running = load("[proxy]\nupstream = \"udp:127.0.0.1:5070\"\n");
    let same = load("[proxy]\nupstream = \"udp:127.0.0.1:5070\"\nmode = \"monitor\"\n");
    assert!(
        running.settings.needing_restart(&same.settings).is_empty(),
        "the mode is applied by a reload"
    );
    let changed = load(
        "[proxy]\nupstream = \"tcp:127.0.0.1:5070\"\nlisten = [\"tcp:127.0.0.1:5062\"]\n\
         flow_secret = \"0123456789abcdef0123\"\nadvertise = \"pool.example.com\"\n\
         [limits]\nmax_headers = 100\n\
         [admin]\nlisten = \"127.0.0.1:9464\"\nallow_remote = true\n",
    );
    assert_eq!(
        running.settings.needing_restart(&changed.settings),
        [
            "proxy.listen",
            "proxy.upstream",
            // (the default sources, the upstream's IP:PORT, did not change;
            // the flow secret is applied by the reload)
            "proxy.advertise",
            "limits",
            "admin.listen",
            "admin.allow_remote"
        ]
    );
    // A new upstream address moves the default sources with it: only the
    // upstream is named. Sources set in the file are named when they change.
    let moved = load("[proxy]\nupstream = \"udp:127.0.0.1:5080\"\n");
    assert_eq!(
        running.settings.needing_restart(&moved.settings),
        ["proxy.upstream"]
    );
    let sources =
        load("[proxy]\nupstream = \"udp:127.0.0.1:5070\"\nupstream_sources = [\"192.0.2.10\"]\n");
    assert_eq!(
        running.settings.needing_restart(&sources.settings),
        ["proxy.upstream_sources"]
    );
    let both =
        load("[proxy]\nupstream = \"udp:127.0.0.1:5080\"\nupstream_sources = [\"192.0.2.10\"]\n");
    assert_eq!(
        running.settings.needing_restart(&both.settings),
        ["proxy.upstream", "proxy.upstream_sources"]
    );
    // [rate_limit] is applied by the reload itself (to the admission).
    let limited = load(
        "[proxy]\nupstream = \"udp:127.0.0.1:5070\"\n[rate_limit]\nrequests_per_second = 5\n\
         trusted = []\nban_secs = 0\nover_limit = \"drop\"\n",
    );
    assert!(
        running
            .settings
            .needing_restart(&limited.settings)
            .is_empty(),
        "{:?}",
        running.settings.needing_restart(&limited.settings)
    );
    assert_ne!(running.settings.rate_limit, limited.settings.rate_limit);
    // The table bounds are limits too: restart-only.
    for key in [
        "max_contacts_per_register = 4",
        "registration_table_bytes = 2097152",
        "transaction_table_bytes = 2097152",
    ] {
        let bounded = load(&format!(
            "[proxy]\nupstream = \"udp:127.0.0.1:5070\"\n[limits]\n{key}\n"
        ));
        assert_eq!(
            running.settings.needing_restart(&bounded.settings),
            ["limits"],
            "{key}"
        );
    }
    // [tls]: the acceptor and the connector are rebuilt from the new
    // settings by the reload; only the handshake deadline needs a restart.
    let tls_changed = load(
        "[proxy]\nupstream = \"udp:127.0.0.1:5070\"\n[tls]\nmin_version = \"1.3\"\n\
         ciphers = \"DEFAULT\"\nhandshake_timeout_secs = 3\n",
    );
    assert_eq!(
        running.settings.needing_restart(&tls_changed.settings),
        ["tls.handshake_timeout_secs"]
    );
    // [hep]: the exporter starts with the process.
    let hep_changed = load(
        "[proxy]\nupstream = \"udp:127.0.0.1:5070\"\n[hep]\ncollector = \"udp:127.0.0.1:9060\"\n",
    );
    assert_eq!(
        running.settings.needing_restart(&hep_changed.settings),
        ["hep"]
    );
}

/// What a reload changes, as its log line names it.
#[test]
fn a_reload_names_the_keys_whose_values_changed() {
    let base = "[response_group]\nworkflows = [\"sip:helpdesk@contoso.com\"]\n";
    let running = load_str(base).unwrap().runtime;
    assert!(running
        .changed_keys(&load_str(base).unwrap().runtime)
        .is_empty());
    let edited = load_str(&format!(
        "[proxy]\nmode = \"monitor\"\n{base}[policy.caller]\nunknown = \"reject\"\n"
    ))
    .unwrap()
    .runtime;
    assert_eq!(
        running.changed_keys(&edited),
        ["proxy.mode", "policy.caller"]
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("clients.toml"),
        sipadmit::config::SHIPPED_CATALOG.replace("Lync 2013", "Lync 2013 desktop"),
    )
    .unwrap();
    let cfg = dir.path().join("sipadmit.toml");
    std::fs::write(&cfg, format!("{base}[catalog]\npath = \"clients.toml\"\n")).unwrap();
    let own = Config::load(&cfg, &Overrides::default()).unwrap().runtime;
    assert_eq!(running.changed_keys(&own), ["catalog"]);
}

/// Issue 18, item 4: only IPv6 listeners of the upstream's transport and an
/// IPv4 registrar cannot work (every request would get 503): refused, with
/// the key and a fix.
#[test]
fn listeners_of_the_other_address_family_than_the_registrar_are_refused() {
    let err = load_str(
        "[proxy]\nlisten = [\"udp:[::1]:5060\", \"tcp:[::1]:5060\"]\nupstream = \"udp:127.0.0.1:5070\"\n",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("proxy.listen"), "{err}");
    assert!(
        err.contains("no udp listener of the upstream's address family (IPv4"),
        "{err}"
    );
    // Dual stack is fine, in either order; a `[::]` listener alone takes
    // IPv4 too (trial 15: it was refused, with a fix that overlapped it).
    load_str(
        "[proxy]\nlisten = [\"udp:[::]:5062\", \"udp:0.0.0.0:5060\"]\nupstream = \"udp:127.0.0.1:5070\"\n",
    )
    .unwrap();
    load_str("[proxy]\nlisten = [\"udp:[::]:5062\"]\nupstream = \"udp:127.0.0.1:5070\"\n").unwrap();
    // IPv4 listeners only and an IPv6 registrar: the fix does not overlap.
    let err = load_str("[proxy]\nlisten = [\"udp:0.0.0.0:5060\"]\nupstream = \"udp:[::1]:5070\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("put udp:[::]:5060 (which takes IPv4 clients too) in place of the IPv4 listeners on port 5060"),
        "{err}"
    );
}

/// A `0.0.0.0` listener beside an IPv6 one, with an IPv6 registrar: it
/// would advertise the IPv6 address facing the registrar toward its IPv4
/// clients (trial 15 r7). Refused unless it is given `proxy.advertise`.
#[test]
fn an_ipv4_wildcard_listener_with_an_ipv6_registrar_needs_advertise() {
    let base = "[proxy]\nlisten = [\"udp:0.0.0.0:5060\", \"udp:[::1]:5060\", \"tcp:0.0.0.0:5060\"]\nupstream = \"udp:[::1]:5070\"\n";
    let err = load_str(base).unwrap_err().to_string();
    for (key, listener) in [
        ("proxy.listen[0]", "udp:0.0.0.0:5060"),
        ("proxy.listen[2]", "tcp:0.0.0.0:5060"),
    ] {
        assert!(
            err.contains(&format!(
                "{key}: {listener} would advertise the address of this host facing the registrar, and the registrar (udp:[::1]:5070) is IPv6"
            )),
            "{err}"
        );
    }
    assert!(err.contains("or give it proxy.advertise"), "{err}");
    load_str(&format!("{base}advertise = \"sip.example.com\"\n")).unwrap();
}

/// What `run` would refuse, or run and fail at, `check-config` refuses
/// first, naming the key: an upstream with no listener of its transport, an
/// upstream that is sipadmit's own listener (every request would loop
/// back, while the probes sipadmit answers itself would call it healthy),
/// a decision log that is a directory. The family check names `--listen`
/// when the listeners came from flags.
#[test]
fn an_upstream_sipadmit_cannot_use_and_a_directory_as_decision_log_are_refused() {
    let refused = |text: &str, key: &str, message: &str| {
        let err = load_str(text).unwrap_err();
        assert_eq!(problem_keys(&err), [key], "{err}");
        assert!(err.to_string().contains(message), "{err}");
    };
    refused(
        "[proxy]\nlisten = [\"udp:127.0.0.1:5060\"]\nupstream = \"tcp:127.0.0.1:5070\"\n",
        "proxy.upstream",
        "tcp:127.0.0.1:5070 needs a tcp listener in proxy.listen",
    );
    for (listen, upstream) in [
        ("udp:127.0.0.1:5060", "udp:127.0.0.1:5060"),
        ("udp:0.0.0.0:5060", "udp:127.0.0.1:5060"),
        ("udp:[::]:5060", "udp:[::1]:5060"),
    ] {
        refused(
            &format!("[proxy]\nlisten = [\"{listen}\"]\nupstream = \"{upstream}\"\n"),
            "proxy.upstream",
            &format!("{upstream} is sipadmit's own listener"),
        );
    }
    // Another address or port, or another transport on the same port, is
    // someone else.
    for (listen, upstream) in [
        ("udp:127.0.0.1:5060", "udp:127.0.0.2:5060"),
        ("udp:0.0.0.0:5060", "udp:127.0.0.1:5070"),
        ("udp:0.0.0.0:5060", "udp:192.0.2.1:5060"),
        ("udp:0.0.0.0:5060", "udp:[::1]:5060"),
    ] {
        // (advertise: a 0.0.0.0 listener faces no IPv6 registrar.)
        let text = format!(
            "[proxy]\nlisten = [\"{listen}\", \"udp:[::1]:5062\"]\nupstream = \"{upstream}\"\nadvertise = \"sip.example.com\"\n"
        );
        load_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    }
    load_str(
        "[proxy]\nlisten = [\"udp:127.0.0.1:5060\", \"tcp:127.0.0.1:5070\"]\nupstream = \"udp:127.0.0.1:5070\"\n",
    )
    .unwrap();

    // A directory as the decision log is this host's state: refused at
    // start and by check-config, not by a load (a reload, which does not
    // reopen the log, goes on).
    let dir = tempfile::tempdir().unwrap();
    let in_a_directory = load_str(&format!(
        "[proxy]\nlisten = [\"udp:127.0.0.1:5060\"]\nupstream = \"udp:127.0.0.1:5070\"\ndecision_log = {:?}\n",
        dir.path()
    ))
    .unwrap();
    let err = sipadmit::app::check_on_this_host(&in_a_directory).unwrap_err();
    assert_eq!(problem_keys(&err), ["proxy.decision_log"], "{err}");
    assert!(
        err.to_string()
            .contains("is a directory: name a file in it"),
        "{err}"
    );
    // A directory the service manager creates at start is not checked.
    load_str(
        "[proxy]\nlisten = [\"udp:127.0.0.1:5060\"]\nupstream = \"udp:127.0.0.1:5070\"\ndecision_log = \"/nonexistent/sipadmit/d.log\"\n",
    )
    .unwrap();

    let err = Config::from_toml_str(
        "[proxy]\nupstream = \"udp:127.0.0.1:5070\"\n",
        &config_dir().join("x.toml"),
        &Overrides {
            listen: vec!["udp:[::1]:5060".into()],
            ..Overrides::default()
        },
    )
    .unwrap_err();
    assert_eq!(problem_keys(&err), ["--listen"], "{err}");
}

/// `[limits] reserved_connections` defaults to a tenth of
/// `max_connections` and must leave untrusted clients a slot; known flows
/// last `known_flow_secs` (0: none) in `known_flow_bytes`.
#[test]
fn reserved_connections_and_known_flows_are_read_and_checked() {
    let limits = |text: &str| load_str(text).unwrap().settings.limits;
    let default = limits("");
    assert_eq!(
        (default.max_connections, default.reserved_connections),
        (4096, 409)
    );
    assert_eq!(
        default.known_flow_ttl,
        Some(std::time::Duration::from_secs(3600))
    );
    assert_eq!(default.known_flow_bytes, 8 << 20);
    let set =
        limits("[limits]\nmax_connections = 20\nreserved_connections = 0\nknown_flow_secs = 0\n");
    assert_eq!((set.reserved_connections, set.known_flow_ttl), (0, None));
    assert_eq!(
        limits("[limits]\nmax_connections = 20\n").reserved_connections,
        2
    );
    let err = load_str(
        "[limits]\nmax_connections = 20\nreserved_connections = 20\nknown_flow_secs = 30\nknown_flow_bytes = 1024\n",
    )
    .unwrap_err();
    assert_eq!(
        problem_keys(&err),
        [
            "limits.known_flow_bytes",
            "limits.reserved_connections",
            "limits.known_flow_secs"
        ]
    );
    assert!(
        err.to_string()
            .contains("20 is not below limits.max_connections (20)"),
        "{err}"
    );
}

// === pool keys ===

/// Every problem of a config, as `key: message` lines.
fn problem_lines(err: &ConfigError) -> Vec<String> {
    err.problems().iter().map(ToString::to_string).collect()
}

/// `proxy.advertise`: one value for every listener, or a table keyed by
/// the listeners as written; every bad key or value named.
#[test]
fn advertise_applies_to_every_listener_or_to_those_named() {
    let config = load_str(
        "[proxy]\nlisten = [\"udp:0.0.0.0:5060\", \"tcp:[::]:5062\"]\n\
         advertise = \"Pool.Contoso.com\"\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    for listener in ["udp:0.0.0.0:5060", "tcp:[::]:5062"] {
        assert_eq!(
            config
                .settings
                .advertise
                .for_listener(&listener.parse().unwrap())
                .map(ToString::to_string),
            Some("pool.contoso.com".into()),
            "{listener}"
        );
    }
    let per_listener = load_str(
        "[proxy]\nlisten = [\"udp:0.0.0.0:5060\", \"tcp:0.0.0.0:5060\"]\n\
         [proxy.advertise]\n\"udp:0.0.0.0:5060\" = \"pool.contoso.com:5060\"\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let advertise = &per_listener.settings.advertise;
    assert_eq!(
        advertise
            .for_listener(&"udp:0.0.0.0:5060".parse().unwrap())
            .map(ToString::to_string),
        Some("pool.contoso.com:5060".into())
    );
    assert!(advertise
        .for_listener(&"tcp:0.0.0.0:5060".parse().unwrap())
        .is_none());

    let err = load_str(
        "[proxy]\nlisten = [\"udp:0.0.0.0:5060\", \"tcp:0.0.0.0:5060\"]\n\
         [proxy.advertise]\n\"udp:10.0.0.1:5060\" = \"pool.contoso.com\"\n\
         \"tcp:0.0.0.0:5060\" = \"sip:pool.contoso.com\"\n",
    )
    .unwrap_err();
    assert_eq!(
        problem_lines(&err),
        [
            "proxy.advertise.\"tcp:0.0.0.0:5060\": \"sip:pool.contoso.com\": give the host only, without a scheme (\"sip:\")",
            "proxy.advertise.\"udp:10.0.0.1:5060\": names no listener; the listeners are udp:0.0.0.0:5060, tcp:0.0.0.0:5060",
        ]
    );
    for (value, message) in [
        (
            "\"2001:db8::1\"",
            "proxy.advertise: \"2001:db8::1\": an IPv6 address goes in brackets: [2001:db8::1] or [2001:db8::1]:5060",
        ),
        (
            "\"0.0.0.0:5060\"",
            "proxy.advertise: \"0.0.0.0:5060\": the unspecified address cannot be reached: give the name or address clients and the registrar reach this instance (or the pool) at",
        ),
        (
            "5060",
            "proxy.advertise: expected a string (HOST or HOST:PORT, for every listener) or a table of listener = \"HOST[:PORT]\", got 5060",
        ),
    ] {
        let err = load_str(&format!("[proxy]\nadvertise = {value}\n")).unwrap_err();
        assert_eq!(problem_lines(&err), [message], "{value}");
    }
}

/// A config file in a directory of its own, with a secret file beside it
/// at `mode`.
#[cfg(unix)]
fn with_secret_file(
    secrets: &str,
    mode: u32,
    config: &str,
) -> (tempfile::TempDir, Result<Config, ConfigError>) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("flow-secrets");
    std::fs::write(&file, secrets).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
    let path = dir.path().join("sipadmit.toml");
    std::fs::write(&path, config).unwrap();
    let loaded = Config::load(&path, &Overrides::default());
    (dir, loaded)
}

/// `proxy.flow_secret_file`: read relative to the config file, the first
/// line signs; refused (naming file and line) when every user may read it,
/// a secret is short, or `flow_secret` is set too.
#[cfg(unix)]
#[test]
fn flow_secret_file_is_read_beside_the_config_and_refused_when_unsafe() {
    const NEW: &str = "new-secret-0123456789abcdef";
    const OLD: &str = "old-secret-0123456789abcdef";
    let two = format!("# rotation in progress\n{NEW}\n{OLD}\n");
    let (_dir, loaded) = with_secret_file(
        &two,
        0o600,
        "[proxy]\nflow_secret_file = \"flow-secrets\"\n",
    );
    let secrets = loaded.unwrap().settings.flow_secrets.unwrap();
    assert_eq!(secrets.secrets(), [NEW.as_bytes(), OLD.as_bytes()]);
    assert_eq!(secrets.key(), "proxy.flow_secret_file");

    let (dir, loaded) = with_secret_file(
        &two,
        0o644,
        "[proxy]\nflow_secret_file = \"flow-secrets\"\n",
    );
    let file = dir.path().join("flow-secrets");
    assert_eq!(
        problem_lines(&loaded.unwrap_err()),
        [format!(
            "proxy.flow_secret_file: {}: every user may read it (mode 0644); make it readable by sipadmit only (chmod 0600 or 0640)",
            file.display()
        )]
    );
    let (dir, loaded) = with_secret_file(
        &format!("{NEW}\nshort-one\n"),
        0o640,
        "[proxy]\nflow_secret_file = \"flow-secrets\"\n",
    );
    assert_eq!(
        problem_lines(&loaded.unwrap_err()),
        [format!(
            "proxy.flow_secret_file: {} line 2: a secret of 9 bytes; at least 16 are needed (e.g. `openssl rand -hex 32`)",
            dir.path().join("flow-secrets").display()
        )]
    );
    let (_dir, loaded) = with_secret_file(
        &two,
        0o600,
        &format!("[proxy]\nflow_secret = \"{OLD}\"\nflow_secret_file = \"flow-secrets\"\n"),
    );
    assert_eq!(
        problem_lines(&loaded.unwrap_err()),
        ["proxy.flow_secret_file: set together with proxy.flow_secret: keep one (the file can be rotated by a reload)"]
    );
    let (dir, loaded) = with_secret_file(&two, 0o600, "[proxy]\nflow_secret_file = \"missing\"\n");
    let lines = problem_lines(&loaded.unwrap_err());
    assert_eq!(lines.len(), 1);
    assert!(
        lines[0].starts_with(&format!(
            "proxy.flow_secret_file: {}: cannot read: ",
            dir.path().join("missing").display()
        )),
        "{lines:?}"
    );
}

/// What a `tls:` listener advertises must be a name of its certificate
/// (the test PKI's server certificate names `localhost`, 127.0.0.1 and
/// ::1; `wrong-name.pem` only `wrong.example`).
#[test]
fn a_tls_listener_advertises_a_name_of_its_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let files = common::tls::Pki::get().write(dir.path());
    let load = |advertise: &str, certificate: &str| {
        let cfg = dir.path().join("sipadmit.toml");
        let key = certificate.replace(".pem", ".key");
        std::fs::write(
            &cfg,
            format!(
                "[proxy]\nlisten = [\"udp:127.0.0.1:5060\", \"tls:127.0.0.1:5061\"]\nadvertise = {advertise}\n\
                 [tls]\ncertificate = \"{certificate}\"\nprivate_key = \"{key}\"\n"
            ),
        )
        .unwrap();
        Config::load(&cfg, &Overrides::default())
    };
    for ok in [
        "\"localhost\"",
        "\"localhost:5061\"",
        "\"127.0.0.1\"",
        "\"[::1]:5061\"",
    ] {
        load(ok, "server.pem").unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
    load("\"wrong.example\"", "wrong-name.pem").unwrap();
    // Only the tls: listener's value is checked.
    load(
        "{ \"udp:127.0.0.1:5060\" = \"pool.example.com\", \"tls:127.0.0.1:5061\" = \"localhost\" }",
        "server.pem",
    )
    .unwrap();
    let err = load("\"pool.example.com\"", "server.pem").unwrap_err();
    assert_eq!(
        problem_lines(&err),
        [format!(
            "proxy.advertise: pool.example.com is not a name of tls.certificate {} (it names localhost, 127.0.0.1, ::1): the registrar and clients reaching tls:127.0.0.1:5061 by it would refuse the certificate",
            files.server.0.display()
        )]
    );
    let err = load(
        "{ \"tls:127.0.0.1:5061\" = \"localhost\" }",
        "wrong-name.pem",
    )
    .unwrap_err();
    assert_eq!(
        problem_keys(&err),
        ["proxy.advertise.\"tls:127.0.0.1:5061\""]
    );
}

/// A reject's Warning must be one RFC 3261 Warning value (20.43): code,
/// agent, quoted text; anything else would put a malformed header on the
/// wire.
#[test]
fn a_warning_that_is_no_warning_value_is_refused() {
    for (value, why) in [
        ("not a warning", "three-digit code"),
        ("399", "an agent"),
        ("399 sipadmit", "double quotes"),
        ("399 sipadmit text", "double quotes"),
        ("399 \"text\"", "an agent"),
        ("399 sipadmit \"x\"y\"", "double quotes"),
        ("399 sipadmit \"x\\\"", "double quotes"),
    ] {
        let err = load_str(&format!("[policy.caller]\nwarning = {value:?}\n")).unwrap_err();
        assert_eq!(problem_keys(&err), ["policy.caller.warning"], "{value}");
        assert!(err.to_string().contains(why), "{value}: {err}");
    }
    load_str(
        "[policy.agent_offer]\nunknown_warning = '399 pool.example.com:5061 \"{client} is not \\\"known\\\"\"'\n",
    )
    .unwrap();
    // Empty: no Warning header at all.
    load_str("[policy.caller]\nwarning = \"\"\n").unwrap();
}

/// Every number out of its range is told the same way: the file, the key,
/// the value with its unit, the bound it crossed, and the default.
#[test]
fn every_range_error_names_the_value_its_bound_and_the_default() {
    let err = load_str(
        r#"
[proxy]
listen = ["udp:127.0.0.1:5060"]
upstream = "udp:127.0.0.1:5070"
workers = 0
upstream_probe_secs = 301

[limits]
max_message_bytes = 100
udp_receive_buffer_bytes = 2147483648
timer_t1_ms = 20
drain_secs = 4000
known_flow_secs = 30

[rate_limit]
ban_secs = 700000

[tls]
handshake_timeout_secs = 0
"#,
    )
    .unwrap_err();
    let text = err.to_string();
    for expected in [
        "proxy.workers: 0 is below the minimum 1 (default: one per core)",
        "proxy.upstream_probe_secs: 301 s is above the maximum 300 s (0 turns the probes off; default 5 s)",
        "limits.max_message_bytes: 100 bytes is below the minimum 1024 bytes (default 65535 bytes)",
        "limits.udp_receive_buffer_bytes: 2147483648 bytes is above the maximum 1073741824 bytes (default 4194304 bytes)",
        "limits.timer_t1_ms: 20 ms is below the minimum 50 ms (RFC 3261 T1; default 500 ms)",
        "limits.drain_secs: 4000 s is above the maximum 3600 s (0 stops at once on SIGTERM; default 30 s)",
        "limits.known_flow_secs: 30 s is below the minimum 60 s (0: no known flows; default 3600 s)",
        "rate_limit.ban_secs: 700000 s is above the maximum 604800 s (7 days; 0: never ban; default 300 s)",
        "tls.handshake_timeout_secs: 0 s is below the minimum 1 s (default 10 s)",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    assert!(text.contains("test.toml"), "the file is named: {text}");
}

/// An upstream at an address of this host that is not a loopback address,
/// on the port of a listener of its transport bound to every address, is
/// sipadmit itself: the start asks the host (`this_host` here) and refuses
/// it. A listener on one address, another port or another transport, or
/// an address the host does not have, is not.
#[test]
fn an_upstream_at_this_hosts_address_behind_an_any_address_listener_is_sipadmit_itself() {
    use sipadmit::config::{own_listener_behind, Endpoint};
    let e = |text: &str| text.parse::<Endpoint>().unwrap();
    let lan: std::net::IpAddr = "10.1.2.3".parse().unwrap();
    let ours = |ip: std::net::IpAddr| ip == lan;
    let own = |listen: &[&str], up: &str| {
        let listen: Vec<Endpoint> = listen.iter().map(|l| e(l)).collect();
        own_listener_behind(&e(up), &listen, false, ours).map(|l| l.to_string())
    };
    assert_eq!(
        own(&["udp:0.0.0.0:5060"], "udp:10.1.2.3:5060").as_deref(),
        Some("udp:0.0.0.0:5060")
    );
    // `[::]` takes IPv4 too; an IPv4-mapped upstream is the same address.
    assert_eq!(
        own(
            &["tcp:[::]:5061", "udp:[::]:5060"],
            "udp:[::ffff:10.1.2.3]:5060"
        )
        .as_deref(),
        Some("udp:[::]:5060")
    );
    assert_eq!(own(&["udp:0.0.0.0:5060"], "udp:10.1.2.4:5060"), None);
    assert_eq!(own(&["udp:0.0.0.0:5060"], "udp:10.1.2.3:5070"), None);
    assert_eq!(
        own(
            &["tcp:0.0.0.0:5060", "udp:0.0.0.0:5061"],
            "tcp:10.1.2.3:5061"
        ),
        None
    );
    assert_eq!(own(&["udp:192.0.2.7:5060"], "udp:10.1.2.3:5060"), None);
    // A HEP collector over TCP is taken by a `tls:` listener as well (its
    // bytes reach whatever accepts the connection); an upstream is not.
    let listen = [e("tls:0.0.0.0:5061")];
    let hep = own_listener_behind(&e("tcp:10.1.2.3:5061"), &listen, true, ours);
    assert_eq!(
        hep.map(|l| l.to_string()).as_deref(),
        Some("tls:0.0.0.0:5061")
    );
    assert_eq!(own(&["tls:0.0.0.0:5061"], "tcp:10.1.2.3:5061"), None);
}
