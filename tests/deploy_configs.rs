//! Every configuration file shipped under deploy/ loads and passes its checks.

use pathway_gateway::config::Config;

#[test]
fn every_config_under_deploy_loads() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            Config::load(Some(&path), std::iter::empty())
                .unwrap_or_else(|err| panic!("{}: {err}", path.display()));
            checked += 1;
        }
    }
    assert!(checked > 0, "no configuration files under deploy/");
}

#[test]
fn the_shipped_example_states_the_defaults() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/gateway.toml");
    let example = Config::load(Some(&path), std::iter::empty()).unwrap();
    let defaults = Config::defaults();
    assert_eq!(example.http.listen, defaults.http.listen);
    assert_eq!(example.http.max_body_bytes, defaults.http.max_body_bytes);
    assert_eq!(example.http.shutdown_grace, defaults.http.shutdown_grace);
    assert_eq!(example.store.dir, defaults.store.dir);
    assert_eq!(example.store.max_batch, defaults.store.max_batch);
    assert_eq!(example.store.queue, defaults.store.queue);
    assert_eq!(example.store.readers, defaults.store.readers);
    assert_eq!(example.log.filter, defaults.log.filter);
    assert_eq!(example.outcomes, defaults.outcomes);
    assert_eq!(
        example.hl7v2.cx.processing_ids,
        defaults.hl7v2.cx.processing_ids
    );
    assert_eq!(example.hl7v2.cx.versions, defaults.hl7v2.cx.versions);
}

#[test]
fn the_shipped_example_keeps_the_routing_defaults_and_its_commented_rules_are_valid() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/gateway.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let example = Config::from_toml(&text, "deploy/gateway.toml", Vec::new()).unwrap();
    let defaults = Config::defaults();
    let names = |c: &Config| {
        let r = &c.routing.rules;
        (
            r.rules.iter().map(|x| x.name.clone()).collect::<Vec<_>>(),
            r.triggers
                .iter()
                .map(|x| x.name.clone())
                .collect::<Vec<_>>(),
        )
    };
    assert_eq!(names(&example), names(&defaults));
    let (p, d) = (example.routing.policy, defaults.routing.policy);
    assert_eq!(
        (p.initial_backoff_ms, p.max_backoff_ms, p.max_attempts),
        (d.initial_backoff_ms, d.max_backoff_ms, d.max_attempts)
    );
    // Uncomment the example rule and trigger: they load, and the trigger
    // replaces the default of the same name.
    let mut uncommented = text.clone();
    let mut block = false;
    for line in text.lines() {
        if line.starts_with("# [[routing.") {
            block = true;
        }
        if block {
            match line.strip_prefix("# ") {
                Some(code) => {
                    uncommented.push('\n');
                    uncommented.push_str(code);
                }
                None => block = false,
            }
        }
    }
    let with_examples = Config::from_toml(&uncommented, "uncommented", Vec::new())
        .unwrap_or_else(|err| panic!("{err}\n{uncommented}"));
    let (rules, triggers) = names(&with_examples);
    assert!(rules.contains(&"ed-attendances-to-audit".to_string()));
    assert_eq!(triggers, names(&defaults).1);
    let at_home = with_examples
        .routing
        .rules
        .triggers
        .iter()
        .find(|t| t.name == "at-home-supported-discharge")
        .unwrap();
    assert!(at_home.when.source().contains("%age >= 75"));
}
