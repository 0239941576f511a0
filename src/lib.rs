//! pathway-gateway: a FHIR R4 interoperability gateway for NHS care pathways.
//!
//! ```text
//! sources ──> map ──> validate ──> store (+ journal, quarantine) ──> route ──> deliver
//!  CSV, HL7 v2,      FHIR R4       local profiles                     rules       pathway services
//!  FHIR REST         resources     in profiles/                                   outcome tracking
//! ```
//!
//! - [`config`]: `gateway.toml` and `PATHWAY_*` overrides, checked before start.
//! - [`server`]: runs the gateway; graceful shutdown.
//! - [`api`]: the HTTP interface: FHIR REST under `/fhir`, health probes.
//! - [`fhir`]: FHIR as carried: resource types, lossless stored JSON, search
//!   parameters, dates, OperationOutcome.
//! - [`store`]: durable versioned storage, search index, journal; SQLite by default.
//!
//! The typed FHIR model lives in the `pathway-model` crate beside this one.

pub mod api;
pub mod config;
pub mod fhir;
pub mod server;
pub mod store;
