//! `pathway-gateway map --from gp-csv FILE`: what a list would become,
//! without a store. Every good row gives a Patient and, when at risk, the
//! referral and care plan, as one FHIR transaction Bundle that could be
//! posted to `/fhir` as it is (conditional creates keyed on the NHS number
//! and the pathway identifiers), with the row errors and validation issues.

use super::layout::Format;
use super::layout::Overrides;
use super::map::{
    CARE_PLAN_ID_SYSTEM, MapContext, NHS_NUMBER_SYSTEM, REFERRAL_ID_SYSTEM, at_risk, map_patient,
    map_referral,
};
use super::read::{self, ListError};
use super::row::{RowError, read_row};
use crate::validate::{Validator, has_errors};
use serde::Serialize;
use serde_json::{Value, json};

/// What the dry run found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DryRun {
    pub format: String,
    pub rows: usize,
    pub accepted: usize,
    pub rejected: usize,
    /// At-risk patients: referrals created unless already on the pathway.
    pub referrals: usize,
    pub errors: Vec<RowError>,
    pub bundle: Value,
}

/// Maps every row of a list. Deterministic: references are derived from
/// the NHS number, times from `cx`.
pub fn map_list(
    bytes: &[u8],
    format: Option<Format>,
    overrides: &Overrides,
    cx: &MapContext,
    validator: &Validator,
) -> Result<DryRun, ListError> {
    let list = read::open(bytes, format, overrides)?;
    let layout = list.layout.clone();
    let mut run = DryRun {
        format: layout.format.as_str().to_string(),
        rows: 0,
        accepted: 0,
        rejected: 0,
        referrals: 0,
        errors: Vec::new(),
        bundle: Value::Null,
    };
    let mut entries = Vec::new();
    for record in list {
        run.rows += 1;
        let record = match record {
            Ok(record) => record,
            Err(err) => {
                run.rejected += 1;
                run.errors.push(RowError {
                    row: 0,
                    column: String::new(),
                    reason: err.to_string(),
                });
                break;
            }
        };
        let row = match read_row(record.line, &record.fields, &layout) {
            Ok(row) => row,
            Err(errors) => {
                run.rejected += 1;
                run.errors.extend(errors);
                continue;
            }
        };
        let patient_url = format!("urn:uuid:00000000-0000-4000-8000-00{}", row.nhs_number);
        let mut row_entries = vec![entry(
            &patient_url,
            map_patient(&row, cx),
            "Patient",
            &format!("identifier={NHS_NUMBER_SYSTEM}|{}", row.nhs_number),
        )];
        if let Some(reason) = at_risk(&row, cx) {
            let referral_url = format!("urn:uuid:00000000-0000-4000-8001-00{}", row.nhs_number);
            let plan_url = format!("urn:uuid:00000000-0000-4000-8002-00{}", row.nhs_number);
            let (service_request, care_plan) =
                map_referral(&row, cx, &reason, &patient_url, &referral_url);
            row_entries.push(entry(
                &referral_url,
                service_request,
                "ServiceRequest",
                &format!("identifier={REFERRAL_ID_SYSTEM}|{}", row.nhs_number),
            ));
            row_entries.push(entry(
                &plan_url,
                care_plan,
                "CarePlan",
                &format!("identifier={CARE_PLAN_ID_SYSTEM}|{}", row.nhs_number),
            ));
        }
        let mut row_errors = Vec::new();
        for e in &row_entries {
            let issues = validator.validate(&e["resource"]);
            if has_errors(&issues) {
                row_errors.extend(issues.into_iter().map(|i| RowError {
                    row: row.row,
                    column: String::new(),
                    reason: format!("{} ({})", i.diagnostics, i.expression.join(", ")),
                }));
            }
        }
        if row_errors.is_empty() {
            run.accepted += 1;
            run.referrals += usize::from(row_entries.len() > 1);
            entries.extend(row_entries);
        } else {
            run.rejected += 1;
            run.errors.extend(row_errors);
        }
    }
    run.bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
    Ok(run)
}

fn entry(full_url: &str, resource: Value, ty: &str, condition: &str) -> Value {
    json!({
        "fullUrl": full_url,
        "resource": resource,
        "request": {"method": "POST", "url": ty, "ifNoneExist": condition}
    })
}
