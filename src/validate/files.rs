//! `pathway-gateway validate FILE…`: resources, Bundles and NDJSON files
//! validated as `$validate` would, one OperationOutcome per resource.

use super::{Validator, has_errors};
use crate::fhir::outcome::{Issue, Severity, operation_outcome};
use serde_json::Value;
use std::io::Write;
use std::path::Path;

/// What a run found, for the summary line and the exit code.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub resources: usize,
    pub invalid: usize,
    pub errors: usize,
    pub warnings: usize,
}

/// One resource found in a file, with where it was found.
pub struct Found {
    /// `file`, `file:3` (NDJSON line) or `file#entry[2]`.
    pub label: String,
    /// Where the resource sits in its file, for issue expressions
    /// (`Bundle.entry[2].resource`); empty at top level.
    pub prefix: String,
    pub resource: Result<Value, Issue>,
}

/// Splits a file into resources: a JSON resource, a Bundle's entries, or
/// NDJSON lines.
pub fn read_resources(label: &str, text: &str) -> Vec<Found> {
    let trimmed = text.trim_start_matches('\u{feff}');
    match serde_json::from_str::<Value>(trimmed) {
        Ok(value) => bundle_entries(label, value),
        Err(whole) => {
            let lines: Vec<(usize, &str)> = trimmed
                .lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
                .collect();
            // One non-blank line that is not JSON: report the JSON error.
            if lines.len() <= 1 {
                return vec![Found {
                    label: label.to_string(),
                    prefix: String::new(),
                    resource: Err(Issue::error(
                        "structure",
                        format!("not valid JSON: {whole}"),
                    )),
                }];
            }
            lines
                .into_iter()
                .flat_map(|(n, line)| {
                    let line_label = format!("{label}:{}", n + 1);
                    match serde_json::from_str::<Value>(line) {
                        Ok(value) => bundle_entries(&line_label, value),
                        Err(err) => vec![Found {
                            label: line_label,
                            prefix: String::new(),
                            resource: Err(Issue::error(
                                "structure",
                                format!("line {} is not valid JSON: {err}", n + 1),
                            )),
                        }],
                    }
                })
                .collect()
        }
    }
}

fn bundle_entries(label: &str, value: Value) -> Vec<Found> {
    if value["resourceType"] != "Bundle" {
        return vec![Found {
            label: label.to_string(),
            prefix: String::new(),
            resource: Ok(value),
        }];
    }
    let Some(Value::Array(entries)) = value.get("entry") else {
        return Vec::new();
    };
    entries
        .iter()
        .enumerate()
        .filter_map(|(i, entry)| {
            let resource = entry.get("resource")?;
            Some(Found {
                label: format!("{label}#entry[{i}]"),
                prefix: format!("Bundle.entry[{i}].resource"),
                resource: Ok(resource.clone()),
            })
        })
        .collect()
}

/// Validates one found resource; issues are located within its file.
pub fn validate_found(validator: &Validator, found: &Found, profiles: &[String]) -> Vec<Issue> {
    match &found.resource {
        Err(issue) => vec![issue.clone()],
        Ok(resource) => {
            let issues = validator.validate_with(resource, profiles);
            if found.prefix.is_empty() {
                return issues;
            }
            let type_name = resource["resourceType"].as_str().unwrap_or_default();
            issues
                .into_iter()
                .map(|i| i.within(&found.prefix, type_name))
                .collect()
        }
    }
}

/// Validates every file, writing a report per resource and a summary line.
/// `json`: one OperationOutcome per resource, as NDJSON, instead of text.
pub fn validate_files(
    validator: &Validator,
    paths: &[impl AsRef<Path>],
    profiles: &[String],
    json: bool,
    out: &mut impl Write,
) -> std::io::Result<Summary> {
    let mut summary = Summary::default();
    for path in paths {
        let path = path.as_ref();
        let label = path.display().to_string();
        let found = match std::fs::read(path) {
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(text) => read_resources(&label, &text),
                Err(err) => vec![Found {
                    label: label.clone(),
                    prefix: String::new(),
                    resource: Err(Issue::error(
                        "structure",
                        format!(
                            "not UTF-8 (invalid byte at offset {})",
                            err.utf8_error().valid_up_to()
                        ),
                    )),
                }],
            },
            Err(err) => vec![Found {
                label: label.clone(),
                prefix: String::new(),
                resource: Err(Issue::error(
                    "not-found",
                    format!("cannot read the file: {err}"),
                )),
            }],
        };
        for item in &found {
            let issues = validate_found(validator, item, profiles);
            summary.resources += 1;
            let errors = issues
                .iter()
                .filter(|i| matches!(i.severity, Severity::Error | Severity::Fatal))
                .count();
            summary.errors += errors;
            summary.warnings += issues
                .iter()
                .filter(|i| i.severity == Severity::Warning)
                .count();
            if has_errors(&issues) {
                summary.invalid += 1;
            }
            if json {
                let mut outcome = operation_outcome(&issues);
                if issues.is_empty() {
                    outcome = operation_outcome(&[Issue::information(
                        "informational",
                        "no issues: the resource is valid",
                    )]);
                }
                writeln!(out, "{outcome}")?;
            } else {
                write_text(out, &item.label, item.resource.as_ref().ok(), &issues)?;
            }
        }
    }
    if !json {
        writeln!(
            out,
            "{} resource{} checked: {} valid, {} invalid ({} error{}, {} warning{})",
            summary.resources,
            plural(summary.resources),
            summary.resources - summary.invalid,
            summary.invalid,
            summary.errors,
            plural(summary.errors),
            summary.warnings,
            plural(summary.warnings)
        )?;
    }
    Ok(summary)
}

fn write_text(
    out: &mut impl Write,
    label: &str,
    resource: Option<&Value>,
    issues: &[Issue],
) -> std::io::Result<()> {
    let what = resource
        .map(|r| {
            let ty = r["resourceType"].as_str().unwrap_or("?");
            match r["id"].as_str() {
                Some(id) => format!(" {ty}/{id}"),
                None => format!(" {ty}"),
            }
        })
        .unwrap_or_default();
    let verdict = if has_errors(issues) { "INVALID" } else { "ok" };
    writeln!(out, "{label}{what}: {verdict}")?;
    for issue in issues {
        writeln!(
            out,
            "  {:<11} {:<13} {}  {}",
            issue.severity.as_str(),
            issue.code,
            issue.expression.join(", "),
            issue.diagnostics
        )?;
    }
    Ok(())
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_bundles_and_ndjson_and_reports_bad_lines() {
        let bundle = r#"{"resourceType":"Bundle","type":"collection","entry":[{"resource":{"resourceType":"Patient"}},{"fullUrl":"x"}]}"#;
        let found = read_resources("b.json", bundle);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].prefix, "Bundle.entry[0].resource");
        let ndjson = "{\"resourceType\":\"Patient\"}\n\n{oops\n{\"resourceType\":\"Encounter\"}\n";
        let found = read_resources("r.ndjson", ndjson);
        let labels: Vec<&str> = found.iter().map(|f| f.label.as_str()).collect();
        assert_eq!(labels, ["r.ndjson:1", "r.ndjson:3", "r.ndjson:4"]);
        assert!(found[1].resource.is_err());
        let single = read_resources("x.json", "{oops");
        assert!(single[0].resource.is_err());
    }
}
