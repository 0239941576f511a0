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
}
