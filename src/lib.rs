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
//! - [`hl7v2`]: the HL7 v2 ADT feed: ER7, datatypes, mapping, event order,
//!   MLLP listener and client.
//! - [`replay`]: sends a folder of inputs to a running gateway.
//! - [`gp`]: GP risk lists (EMIS Web, SystmOne CSV) into patients and referrals.
//! - [`validate`]: FHIR R4 base validation and local profiles (`profiles/`).
//! - [`fhirpath`]: a FHIRPath evaluator over FHIR JSON, for invariants and rules.
//! - [`store`]: durable versioned storage, search index, journal, routing
//!   outbox and deliveries; SQLite by default.
//! - [`outcomes`]: the pathway outcome figures (report), from the store.
//! - [`routing`]: rules and triggers (FHIRPath) over stored versions, and
//!   at-least-once delivery to pathway services.
//!
//! The typed FHIR model (`pathway-model`, beside this crate) is not on the
//! request path: tests use it as an independent oracle for [`validate`].

pub mod api;
pub mod config;
pub mod fhir;
pub mod fhirpath;
pub mod gp;
pub mod hashing;
pub mod hl7v2;
pub mod outcomes;
pub mod replay;
pub mod routing;
pub mod server;
pub mod store;
pub mod validate;
