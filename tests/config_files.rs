//! Every shipped config file loads; bad configs are refused with every
//! problem and its key path.

use std::path::{Path, PathBuf};

use sipadmit::classify::Catalog;
use sipadmit::config::{Config, ConfigError, Overrides};

fn config_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config")
}

fn load_str(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml_str(text, &config_dir().join("test.toml"), &Overrides::default())
}

#[test]
fn every_file_in_config_loads() {
    let mut loaded = 0;
    for entry in std::fs::read_dir(config_dir()).unwrap() {
        let path = entry.unwrap().path();
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
fn response_group_keys_alone_are_enough() {
    let c = load_str(
        "[response_group]\nworkflows = [\"sip:helpdesk@contoso.com\"]\napplication_user_agents = [\"Response_Group_Service\"]\n",
    )
    .unwrap();
    assert_eq!(c.catalog_source, "built-in");
    assert_eq!(c.policy.agent_offer.reply.status, 480);
    assert_eq!(c.policy.caller.reply.status, 403);
    assert!(c.upstream.is_none());
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
            listen: vec!["udp:[::1]:0".into()],
            upstream: Some("tcp:127.0.0.1:5070".into()),
            mode: Some(sipadmit::policy::Mode::Monitor),
            decision_log: Some("/tmp/d.jsonl".into()),
        },
    )
    .unwrap();
    assert_eq!(c.listen.len(), 1);
    assert!(c.listen[0].addr.is_ipv6());
    assert_eq!(c.upstream.unwrap().to_string(), "tcp:127.0.0.1:5070");
    assert_eq!(c.policy.mode, sipadmit::policy::Mode::Monitor);
}
