//! Configuration: `gateway.toml` (or `--config PATH`), then `PATHWAY_*`
//! environment overrides, then checks. Everything is checked before any port
//! is bound; an unknown key or a bad value stops the gateway with a message
//! that names it.
//!
//! Environment overrides name a key by its path, upper-cased, with `__`
//! between levels: `PATHWAY_HTTP__LISTEN=0.0.0.0:8080` sets `http.listen`.
//! The value is read as a TOML value when it is one (`8080`, `true`), and as a
//! string otherwise.

use crate::gp::ingest::ListOptions;
use crate::gp::layout::{Field, Format, Overrides};
use crate::gp::map::{DEFAULT_SEVERE_FROM, MapContext};
use crate::hl7v2::adt::AdtContext;
use crate::routing::care_homes::Register;
use crate::routing::deliver::{Destination, DestinationConfig};
use crate::routing::rules::{RoutingConfig, Rules};
use crate::routing::{Policy, RoutingSetup};
use crate::store::sqlite::SqliteOptions;
use crate::validate::Validator;
use crate::validate::profile::ONE_BROMLEY_PROFILES;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The file read from the working directory when no `--config` is given.
pub const DEFAULT_CONFIG_FILE: &str = "gateway.toml";
/// Prefix of environment overrides.
pub const ENV_PREFIX: &str = "PATHWAY_";
/// Default HTTP address: loopback only, until someone decides otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default limit of a FHIR request body (16 MiB): large transaction Bundles
/// fit, a runaway upload does not.
pub const DEFAULT_MAX_BODY_BYTES: usize = 16 * 1024 * 1024;
/// Default time to let in-flight requests finish after SIGTERM.
pub const DEFAULT_SHUTDOWN_GRACE_SECS: u64 = 30;
/// Default most writes committed together (one fsync).
pub const DEFAULT_GROUP_COMMIT_MAX: usize = 512;
/// Default writes waiting for the writer before senders are held back.
pub const DEFAULT_WRITE_QUEUE: usize = 4096;
/// Default concurrent read connections: twice the cores of a small host.
pub const DEFAULT_READ_CONNECTIONS: usize = 4;

/// The configuration file, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub validation: ValidationConfig,
    #[serde(default)]
    pub gp_lists: GpListsConfig,
    #[serde(default)]
    pub hl7v2: Hl7v2Config,
    /// `[destinations.NAME]`: the pathway services routing delivers to.
    #[serde(default)]
    pub destinations: BTreeMap<String, DestinationConfig>,
    #[serde(default)]
    pub care_homes: CareHomesConfig,
    #[serde(default)]
    pub delivery: Policy,
    #[serde(default)]
    pub routing: RoutingConfig,
    #[serde(default)]
    pub outcomes: crate::outcomes::OutcomesConfig,
}

/// `[care_homes]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CareHomesConfig {
    /// CSV file `ods_code,name,postcode` (relative to the working directory).
    pub register: Option<PathBuf>,
}

/// `[http]`: the FHIR REST listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address and port to listen on (`127.0.0.1:8080`).
    pub listen: String,
    /// Largest FHIR request body in bytes; larger ones get 413 unread.
    pub max_body_bytes: usize,
    /// The public base URL of the FHIR API (`https://gw.example.nhs.uk/fhir`),
    /// used in `Location` headers and Bundle links. When unset, it is built
    /// from the request's `Host` header.
    pub base_url: Option<String>,
    /// Seconds to let in-flight requests finish after SIGTERM or SIGINT.
    pub shutdown_grace_secs: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: DEFAULT_LISTEN.to_string(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            base_url: None,
            shutdown_grace_secs: DEFAULT_SHUTDOWN_GRACE_SECS,
        }
    }
}

/// `[store]`: where and how resources are kept.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Directory of the embedded store (created if missing).
    pub path: PathBuf,
    /// Most writes committed together in one transaction and one fsync.
    pub group_commit_max: usize,
    /// Writes that may wait for the writer before senders are held back.
    pub write_queue: usize,
    /// Concurrent read connections.
    pub read_connections: usize,
    /// Current resources kept in memory (0: none; ~2 KB each).
    pub cache_resources: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            path: PathBuf::from("./data"),
            group_commit_max: DEFAULT_GROUP_COMMIT_MAX,
            write_queue: DEFAULT_WRITE_QUEUE,
            read_connections: DEFAULT_READ_CONNECTIONS,
            cache_resources: crate::store::sqlite::DEFAULT_CACHE_RESOURCES,
        }
    }
}

/// `[log]`: structured logs on standard output.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A `tracing` filter: `info`, `pathway_gateway=debug`, …
    pub level: String,
    /// `text` for people, `json` for log collectors.
    pub format: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".to_string(),
            format: "text".to_string(),
        }
    }
}

/// `[validation]`: which profiles every write must meet.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ValidationConfig {
    /// A directory of StructureDefinitions, ValueSets and CodeSystems to use
    /// instead of the copy of `profiles/` built into the binary.
    pub profiles_dir: Option<PathBuf>,
    /// Profile canonicals enforced on every write of their resource type.
    /// Base R4 validation always applies; an empty list enforces no profile.
    pub enforce: Vec<String>,
}

impl Default for ValidationConfig {
    fn default() -> Self {
        ValidationConfig {
            profiles_dir: None,
            enforce: ONE_BROMLEY_PROFILES.map(str::to_string).to_vec(),
        }
    }
}

/// `[gp_lists]`: GP risk-list uploads (`POST /ingest/gp-risk-list`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GpListsConfig {
    /// Largest list upload in bytes; separate from the FHIR body limit.
    pub max_bytes: usize,
    /// The eFI score from which a patient is at risk (besides category
    /// `severe`). 0.355 takes 13/36 shown to two places (`0.36`) as severe.
    pub severe_from: f64,
    /// Header names per source, over the EMIS and SystmOne presets:
    /// `[gp_lists.columns.G84001] nhs_number = "NHS No"`; `"*"` applies to
    /// every practice. Fields: nhs_number, family_name, given_names,
    /// birth_date, gender, postcode, usual_gp, efi_score, efi_category.
    pub columns: HashMap<String, HashMap<String, String>>,
}

/// Default largest risk list: 256 MiB, some 2 million rows.
pub const DEFAULT_GP_LIST_MAX_BYTES: usize = 256 * 1024 * 1024;

impl Default for GpListsConfig {
    fn default() -> Self {
        GpListsConfig {
            max_bytes: DEFAULT_GP_LIST_MAX_BYTES,
            severe_from: DEFAULT_SEVERE_FROM,
            columns: HashMap::new(),
        }
    }
}

/// `[hl7v2]`: the ADT feed over MLLP (and `POST /ingest/hl7v2`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Hl7v2Config {
    /// MLLP listen address; `""` turns the MLLP listener off (HTTP stays).
    pub listen: String,
    /// Largest message (MLLP frame or one message in an HTTP body), bytes.
    pub max_message_bytes: usize,
    /// A connection silent this long is closed.
    pub idle_timeout_secs: u64,
    /// An MLLP frame not ended this long after its first byte closes its
    /// connection (a sender trickling bytes cannot hold a slot for ever).
    pub frame_timeout_secs: u64,
    /// Connections served at once; more wait in the accept backlog.
    pub max_connections: usize,
    /// Local PV1-2 patient classes → v3 ActCode, e.g. `D = "AMB"` (day case).
    pub patient_class: BTreeMap<String, String>,
    /// MSH-11.1 processing ids taken (`P`, `T`, `D`); others get `AR`.
    pub processing_ids: Vec<String>,
    /// MSH-12.1 version ids taken (HL7 table 0104); others get `AR`.
    pub versions: Vec<String>,
    /// Answer a message in enhanced mode (MSH-15/16 valued) with the
    /// accept acknowledgement (`CA`/`CE`/`CR`) instead of `AA`/`AE`/`AR`.
    pub accept_acknowledgements: bool,
}

/// Longest timeout or grace period a setting may give: 30 days (a bound
/// keeps deadlines from overflowing). A shutdown grace of 0 would abort the
/// drain at once (frames read but unanswered), and an idle or frame timeout
/// of 0 would close every connection.
const MAX_TIMEOUT_SECS: u64 = 30 * 86_400;

/// Default MLLP port (the conventional one for HL7 over MLLP).
pub const DEFAULT_MLLP_LISTEN: &str = "127.0.0.1:2575";
/// Default largest HL7 message: 1 MiB.
pub const DEFAULT_HL7_MAX_BYTES: usize = 1024 * 1024;

impl Default for Hl7v2Config {
    fn default() -> Self {
        Hl7v2Config {
            listen: DEFAULT_MLLP_LISTEN.to_string(),
            max_message_bytes: DEFAULT_HL7_MAX_BYTES,
            idle_timeout_secs: 300,
            frame_timeout_secs: 60,
            max_connections: 256,
            patient_class: BTreeMap::new(),
            processing_ids: vec!["P".to_string()],
            versions: crate::hl7v2::adt::VERSIONS.map(String::from).to_vec(),
            accept_acknowledgements: false,
        }
    }
}

/// Checked `[hl7v2]`.
#[derive(Debug, Clone)]
pub struct Hl7v2 {
    /// `None`: no MLLP listener.
    pub listen: Option<SocketAddr>,
    pub max_message_bytes: usize,
    pub idle_timeout: Duration,
    pub frame_timeout: Duration,
    pub max_connections: usize,
    pub cx: AdtContext,
}

/// v3 ActCode encounter classes a local PV1-2 code may map to (the
/// `encounter-class` value set of `profiles/`).
const ENCOUNTER_CLASSES: [&str; 11] = [
    "AMB", "EMER", "FLD", "HH", "IMP", "ACUTE", "NONAC", "OBSENC", "PRENC", "SS", "VR",
];

/// Checked `[gp_lists]`.
#[derive(Debug, Clone)]
pub struct GpLists {
    pub max_bytes: usize,
    pub severe_from: f64,
    /// Practice ODS code (or `*`) → header overrides.
    pub columns: HashMap<String, Overrides>,
}

impl GpLists {
    /// How to take a list from `practice` received at `received` (FHIR
    /// dateTime), with this configuration's columns and threshold.
    pub fn list_options(
        &self,
        practice: &str,
        format: Option<Format>,
        atomic: bool,
        received: String,
    ) -> ListOptions {
        ListOptions {
            practice: practice.to_string(),
            format,
            atomic,
            overrides: self.overrides_for(practice),
            cx: MapContext {
                practice: practice.to_string(),
                received,
                severe_from: self.severe_from,
            },
        }
    }

    /// The header names configured for a practice (its own over `*`).
    pub fn overrides_for(&self, practice: &str) -> Overrides {
        let mut out = self.columns.get("*").cloned().unwrap_or_default();
        if let Some(own) = self.columns.get(practice) {
            out.extend(own.iter().map(|(k, v)| (*k, v.clone())));
        }
        out
    }
}

/// Checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub http: Http,
    pub store: SqliteOptions,
    pub log: Log,
    /// The validator, compiled from the profiles at load time so that a bad
    /// profile stops start-up before any port is bound.
    pub validator: Arc<Validator>,
    pub gp_lists: GpLists,
    pub hl7v2: Hl7v2,
    /// Rules, destinations (with their HTTP clients), the care-home register
    /// and the retry policy.
    pub routing: RoutingSetup,
    /// Outcome definitions: windows, unit costs, opt-outs.
    pub outcomes: crate::outcomes::Settings,
}

#[derive(Debug, Clone)]
pub struct Http {
    pub listen: SocketAddr,
    pub max_body_bytes: usize,
    pub base_url: Option<String>,
    pub shutdown_grace: Duration,
}

#[derive(Debug, Clone)]
pub struct Log {
    pub filter: String,
    pub json: bool,
}

/// Why the configuration was refused.
#[derive(Debug, thiserror::Error)]
#[error("Invalid configuration: {0}")]
pub struct ConfigError(String);

impl Config {
    /// Defaults only: what `serve` runs on with no file and no environment.
    pub fn defaults() -> Config {
        ConfigFile::default()
            .check()
            .unwrap_or_else(|err| unreachable!("defaults are valid: {err}"))
    }

    /// Loads `path` (or `./gateway.toml` if present), applies the `PATHWAY_*`
    /// variables of `env`, and checks the result.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let (text, origin) = match path {
            Some(path) => (
                std::fs::read_to_string(path)
                    .map_err(|err| ConfigError(format!("cannot read {}: {err}", path.display())))?,
                path.display().to_string(),
            ),
            None => match std::fs::read_to_string(DEFAULT_CONFIG_FILE) {
                Ok(text) => (text, DEFAULT_CONFIG_FILE.to_string()),
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                    (String::new(), "defaults".to_string())
                }
                Err(err) => {
                    return Err(ConfigError(format!(
                        "cannot read {DEFAULT_CONFIG_FILE}: {err}"
                    )));
                }
            },
        };
        Self::from_toml(&text, &origin, env)
    }

    /// As [`Config::load`], from TOML text; `origin` names it in messages.
    pub fn from_toml(
        text: &str,
        origin: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut table: toml::Table = text
            .parse()
            .map_err(|err: toml::de::Error| ConfigError(format!("{origin}: {err}")))?;
        for (name, raw) in env {
            let Some(path) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let keys: Vec<String> = path.split("__").map(str::to_lowercase).collect();
            set_path(&mut table, &keys, parse_env_value(&raw))
                .map_err(|msg| ConfigError(format!("{name}: {msg}")))?;
        }
        let file: ConfigFile = serde_path_to_error::deserialize(toml::Value::Table(table))
            .map_err(|err| {
                let path = err.path().to_string();
                ConfigError(format!("{origin}: {path}: {}", err.into_inner()))
            })?;
        file.check()
    }
}

impl ConfigFile {
    fn check(self) -> Result<Config, ConfigError> {
        let bad = |key: &str, msg: String| ConfigError(format!("{key}: {msg}"));
        let listen: SocketAddr = self.http.listen.parse().map_err(|_| {
            bad(
                "http.listen",
                format!(
                    "\"{}\" is not an address and port such as 127.0.0.1:8080",
                    self.http.listen
                ),
            )
        })?;
        if !(1024..=1 << 30).contains(&self.http.max_body_bytes) {
            return Err(bad(
                "http.max_body_bytes",
                format!("{} is outside 1024 to 1073741824", self.http.max_body_bytes),
            ));
        }
        let base_url = match self.http.base_url {
            None => None,
            Some(url) if url.starts_with("http://") || url.starts_with("https://") => {
                Some(url.trim_end_matches('/').to_string())
            }
            Some(url) => {
                return Err(bad(
                    "http.base_url",
                    format!("\"{url}\" is not an http:// or https:// URL"),
                ));
            }
        };
        let in_range = |key: &str, value: usize, max: usize| {
            if (1..=max).contains(&value) {
                Ok(value)
            } else {
                Err(bad(key, format!("{value} is outside 1 to {max}")))
            }
        };
        let store = SqliteOptions {
            dir: self.store.path,
            max_batch: in_range(
                "store.group_commit_max",
                self.store.group_commit_max,
                100_000,
            )?,
            queue: in_range("store.write_queue", self.store.write_queue, 1_000_000)?,
            readers: in_range("store.read_connections", self.store.read_connections, 256)?,
            cache_resources: if self.store.cache_resources <= 1_000_000 {
                self.store.cache_resources
            } else {
                return Err(bad(
                    "store.cache_resources",
                    format!("{} is outside 0 to 1000000", self.store.cache_resources),
                ));
            },
            // Set from the routing rules when the gateway starts.
            outbox_types: None,
            checkpoint_bytes: crate::store::sqlite::DEFAULT_CHECKPOINT_BYTES,
        };
        if let Err(err) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return Err(bad("log.level", format!("\"{}\": {err}", self.log.level)));
        }
        let json = match self.log.format.as_str() {
            "text" => false,
            "json" => true,
            other => {
                return Err(bad(
                    "log.format",
                    format!("\"{other}\" is neither \"text\" nor \"json\""),
                ));
            }
        };
        let validator = Validator::load(
            self.validation.profiles_dir.as_deref(),
            &self.validation.enforce,
        )
        .map_err(|err| bad("validation", err.to_string()))?;
        if !(1024..=1 << 34).contains(&self.gp_lists.max_bytes) {
            return Err(bad(
                "gp_lists.max_bytes",
                format!("{} is outside 1024 to 17179869184", self.gp_lists.max_bytes),
            ));
        }
        if !(0.0..=1.0).contains(&self.gp_lists.severe_from) {
            return Err(bad(
                "gp_lists.severe_from",
                format!("{} is not an eFI score (0 to 1)", self.gp_lists.severe_from),
            ));
        }
        let mut columns = HashMap::new();
        for (source, fields) in self.gp_lists.columns {
            let mut overrides = Overrides::new();
            for (key, header) in fields {
                let field = Field::from_key(&key).ok_or_else(|| {
                    bad(
                        &format!("gp_lists.columns.{source}.{key}"),
                        "not a risk-list field (nhs_number, family_name, given_names, birth_date, gender, postcode, usual_gp, efi_score, efi_category)".to_string(),
                    )
                })?;
                overrides.insert(field, header);
            }
            columns.insert(source, overrides);
        }
        let mllp_listen = match self.hl7v2.listen.trim() {
            "" => None,
            text => Some(text.parse::<SocketAddr>().map_err(|_| {
                bad(
                    "hl7v2.listen",
                    format!("\"{text}\" is not an address and port such as 127.0.0.1:2575 (\"\" turns MLLP off)"),
                )
            })?),
        };
        if !(64..=1 << 30).contains(&self.hl7v2.max_message_bytes) {
            return Err(bad(
                "hl7v2.max_message_bytes",
                format!(
                    "{} is outside 64 to 1073741824",
                    self.hl7v2.max_message_bytes
                ),
            ));
        }
        for (key, secs) in [
            ("hl7v2.idle_timeout_secs", self.hl7v2.idle_timeout_secs),
            ("hl7v2.frame_timeout_secs", self.hl7v2.frame_timeout_secs),
            ("http.shutdown_grace_secs", self.http.shutdown_grace_secs),
        ] {
            if !(1..=MAX_TIMEOUT_SECS).contains(&secs) {
                return Err(bad(
                    key,
                    format!("{secs} is outside 1 to {MAX_TIMEOUT_SECS} seconds"),
                ));
            }
        }
        let max_connections =
            in_range("hl7v2.max_connections", self.hl7v2.max_connections, 100_000)?;
        for (code, class) in &self.hl7v2.patient_class {
            if !ENCOUNTER_CLASSES.contains(&class.as_str()) {
                return Err(bad(
                    &format!("hl7v2.patient_class.{code}"),
                    format!(
                        "\"{class}\" is not an encounter class ({})",
                        ENCOUNTER_CLASSES.join(", ")
                    ),
                ));
            }
        }
        // Codes of an HL7 table, at least one.
        let from_table = |key: &str, values: &[String], what: &str, table: &str, codes: &[&str]| {
            let codes_text = codes.join(", ");
            if values.is_empty() {
                return Err(bad(
                    key,
                    format!("must list at least one {what} (HL7 table {table}: {codes_text})"),
                ));
            }
            match values.iter().find(|v| !codes.contains(&v.as_str())) {
                Some(v) => Err(bad(
                    key,
                    format!("\"{v}\" is not a {what} (HL7 table {table}: {codes_text})"),
                )),
                None => Ok(()),
            }
        };
        from_table(
            "hl7v2.processing_ids",
            &self.hl7v2.processing_ids,
            "processing id",
            "0103",
            &["P", "T", "D"],
        )?;
        from_table(
            "hl7v2.versions",
            &self.hl7v2.versions,
            "version id",
            "0104",
            &crate::hl7v2::adt::VERSION_IDS,
        )?;
        let hl7v2 = Hl7v2 {
            listen: mllp_listen,
            max_message_bytes: self.hl7v2.max_message_bytes,
            idle_timeout: Duration::from_secs(self.hl7v2.idle_timeout_secs),
            frame_timeout: Duration::from_secs(self.hl7v2.frame_timeout_secs),
            max_connections,
            cx: AdtContext {
                patient_class: self.hl7v2.patient_class,
                processing_ids: self.hl7v2.processing_ids,
                versions: self.hl7v2.versions,
                accept_acknowledgements: self.hl7v2.accept_acknowledgements,
            },
        };
        let rules = Rules::compile(&self.routing).map_err(ConfigError)?;
        self.delivery.check().map_err(ConfigError)?;
        let destinations = self
            .destinations
            .iter()
            .map(|(name, config)| Destination::build(name, config).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()
            .map_err(ConfigError)?;
        let register = match &self.care_homes.register {
            Some(path) => Register::load(path).map_err(|err| bad("care_homes.register", err))?,
            None => Register::default(),
        };
        let routing = RoutingSetup {
            rules: Arc::new(rules),
            destinations,
            register: Arc::new(register),
            policy: self.delivery,
            clock: Arc::new(crate::routing::SystemClock),
        };
        let outcomes = self.outcomes.check().map_err(ConfigError)?;
        Ok(Config {
            outcomes,
            routing,
            hl7v2,
            gp_lists: GpLists {
                max_bytes: self.gp_lists.max_bytes,
                severe_from: self.gp_lists.severe_from,
                columns,
            },
            validator: Arc::new(validator),
            http: Http {
                listen,
                max_body_bytes: self.http.max_body_bytes,
                base_url,
                shutdown_grace: Duration::from_secs(self.http.shutdown_grace_secs),
            },
            store,
            log: Log {
                filter: self.log.level,
                json,
            },
        })
    }
}

fn parse_env_value(raw: &str) -> toml::Value {
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()))
}

fn set_path(table: &mut toml::Table, keys: &[String], value: toml::Value) -> Result<(), String> {
    match keys {
        [] => Err("names no configuration key".to_string()),
        [last] => {
            table.insert(last.clone(), value);
            Ok(())
        }
        [first, rest @ ..] => {
            let entry = table
                .entry(first.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            match entry {
                toml::Value::Table(inner) => set_path(inner, rest, value),
                _ => Err(format!("\"{first}\" is not a table")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_toml(
            text,
            "test.toml",
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn defaults_listen_on_loopback_8080_with_data_in_dot_data() {
        let config = load("", &[]).unwrap();
        assert_eq!(config.http.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(config.store.dir, PathBuf::from("./data"));
        assert_eq!(config.http.max_body_bytes, 16 * 1024 * 1024);
    }

    #[test]
    fn environment_overrides_the_file() {
        let config = load(
            "[http]\nlisten = \"127.0.0.1:9000\"\n",
            &[
                ("PATHWAY_HTTP__LISTEN", "127.0.0.1:9001"),
                ("PATHWAY_STORE__READ_CONNECTIONS", "8"),
                ("PATHWAY_STORE__CACHE_RESOURCES", "0"),
            ],
        )
        .unwrap();
        assert_eq!(config.http.listen.port(), 9001);
        assert_eq!(config.store.readers, 8);
        assert_eq!(config.store.cache_resources, 0);
        assert_eq!(
            load("", &[]).unwrap().store.cache_resources,
            crate::store::sqlite::DEFAULT_CACHE_RESOURCES
        );
    }

    #[test]
    fn refuses_unknown_keys_naming_them() {
        let err = load("[http]\nlissten = \"x\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("lissten"), "{err}");
        assert!(err.starts_with("Invalid configuration"), "{err}");
        let err = load("", &[("PATHWAY_NOPE", "1")]).unwrap_err().to_string();
        assert!(err.contains("nope"), "{err}");
    }

    #[test]
    fn refuses_bad_values_naming_the_key() {
        for (text, key) in [
            ("[http]\nlisten = \"localhost\"\n", "http.listen"),
            ("[http]\nmax_body_bytes = 0\n", "http.max_body_bytes"),
            ("[http]\nbase_url = \"ftp://x\"\n", "http.base_url"),
            ("[log]\nformat = \"xml\"\n", "log.format"),
            ("[store]\ngroup_commit_max = 0\n", "store.group_commit_max"),
            (
                "[store]\ncache_resources = 2000000\n",
                "store.cache_resources",
            ),
            ("[http]\nlisten = 8080\n", "http.listen"),
            (
                "[hl7v2]\nprocessing_ids = [\"P\", \"X\"]\n",
                "hl7v2.processing_ids",
            ),
            ("[hl7v2]\nprocessing_ids = []\n", "hl7v2.processing_ids"),
            (
                "[hl7v2]\nversions = [\"2.4\", \"2.10\"]\n",
                "hl7v2.versions",
            ),
            ("[hl7v2]\nversions = []\n", "hl7v2.versions"),
            (
                "[hl7v2]\nidle_timeout_secs = 0\n",
                "hl7v2.idle_timeout_secs",
            ),
            (
                "[hl7v2]\nframe_timeout_secs = 0\n",
                "hl7v2.frame_timeout_secs",
            ),
            (
                "[http]\nshutdown_grace_secs = 0\n",
                "http.shutdown_grace_secs",
            ),
            (
                "[http]\nshutdown_grace_secs = 2592001\n",
                "http.shutdown_grace_secs",
            ),
        ] {
            let err = load(text, &[]).unwrap_err().to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
    }

    #[test]
    fn the_feed_takes_production_messages_unless_told_otherwise() {
        assert_eq!(load("", &[]).unwrap().hl7v2.cx.processing_ids, ["P"]);
        let test_instance = load("[hl7v2]\nprocessing_ids = [\"T\", \"D\"]\n", &[]).unwrap();
        assert_eq!(test_instance.hl7v2.cx.processing_ids, ["T", "D"]);
        let from_env = load("", &[("PATHWAY_HL7V2__PROCESSING_IDS", "[\"T\"]")]).unwrap();
        assert_eq!(from_env.hl7v2.cx.processing_ids, ["T"]);
    }

    #[test]
    fn the_feed_takes_the_versions_its_mapping_is_written_to_unless_told_otherwise() {
        let default = load("", &[]).unwrap();
        assert_eq!(
            default.hl7v2.cx.versions,
            ["2.3", "2.3.1", "2.4", "2.5", "2.5.1"]
        );
        let later = load("[hl7v2]\nversions = [\"2.4\", \"2.6\"]\n", &[]).unwrap();
        assert_eq!(later.hl7v2.cx.versions, ["2.4", "2.6"]);
        let from_env = load("", &[("PATHWAY_HL7V2__VERSIONS", "[\"2.5.1\"]")]).unwrap();
        assert_eq!(from_env.hl7v2.cx.versions, ["2.5.1"]);
    }
}
