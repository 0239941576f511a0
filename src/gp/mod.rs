//! GP risk lists: EMIS Web and SystmOne report exports (CSV) of the patients
//! a practice finds most at risk, turned into Patients, proactive-care
//! referrals and draft care plans.
//!
//! ```text
//! bytes ─> read (encoding, CSV, header row) ─> row (checked values)
//!       ─> map (Patient; ServiceRequest + CarePlan when at risk)
//!       ─> ingest (validate, one transaction per row, report, quarantine)
//! ```

pub mod dry_run;
pub mod ingest;
pub mod layout;
pub mod map;
pub mod read;
pub mod row;
