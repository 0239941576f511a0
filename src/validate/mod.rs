//! Validation: is a resource valid FHIR R4, and does it conform to the
//! profiles that apply to it?
//!
//! ```text
//! JSON ─> walk (R4 base: elements, types, cardinality, formats, codes,
//!         │     references, core invariants)                  definitions, primitive, walk
//!         └─> conform (each profile: cardinality, fixed/pattern, types,
//!               slices, bindings, extensions, invariants)     profile, conform, terminology
//!      ─> issues (all of them, each at a FHIRPath expression)
//! ```
//!
//! The base definitions (`r4.defs`) and the profiles (`profiles/`, built into
//! the binary) are compiled once at start-up; validating borrows the parsed
//! JSON and allocates little more than the issues it reports.

pub mod conform;
pub mod definitions;
pub mod files;
pub mod primitive;
pub mod profile;
pub mod terminology;
pub mod walk;

use crate::fhir::outcome::{Issue, Severity};
use crate::hashing::FastMap;
use definitions::{Definitions, Kind};
use profile::{ProfileError, ProfileSet};
use serde_json::Value;

/// The compiled validator: R4 base definitions, profiles, and which profiles
/// the write path enforces for each resource type.
#[derive(Debug)]
pub struct Validator {
    defs: Definitions,
    profiles: ProfileSet,
    /// Resource type → profile canonicals every write of that type must meet.
    enforced: FastMap<String, Vec<String>>,
}

/// Why the validator could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ValidatorError {
    #[error(transparent)]
    Definitions(#[from] definitions::DefinitionError),
    #[error(transparent)]
    Profiles(#[from] ProfileError),
    #[error("profile {0} is enforced but not defined under profiles/")]
    UnknownEnforced(String),
}

impl Validator {
    /// Base R4 plus the embedded profiles, enforcing the One Bromley ones.
    pub fn embedded() -> Result<Validator, ValidatorError> {
        let defs = Definitions::r4()?;
        let profiles = ProfileSet::embedded(&defs)?;
        Self::new(
            defs,
            profiles,
            &profile::ONE_BROMLEY_PROFILES.map(str::to_string),
        )
    }

    /// Base R4 plus the profiles under `dir` (or the embedded ones), enforcing
    /// `enforce` on writes.
    pub fn load(
        dir: Option<&std::path::Path>,
        enforce: &[String],
    ) -> Result<Validator, ValidatorError> {
        let defs = Definitions::r4()?;
        let profiles = match dir {
            Some(dir) => ProfileSet::from_dir(&defs, dir)?,
            None => ProfileSet::embedded(&defs)?,
        };
        Self::new(defs, profiles, enforce)
    }

    fn new(
        defs: Definitions,
        profiles: ProfileSet,
        enforce: &[String],
    ) -> Result<Validator, ValidatorError> {
        let mut enforced: FastMap<String, Vec<String>> = FastMap::default();
        for url in enforce {
            let profile = profiles
                .get(url)
                .ok_or_else(|| ValidatorError::UnknownEnforced(url.clone()))?;
            enforced
                .entry(profile.type_name.clone())
                .or_default()
                .push(url.clone());
        }
        Ok(Validator {
            defs,
            profiles,
            enforced,
        })
    }

    pub fn profiles(&self) -> &ProfileSet {
        &self.profiles
    }

    /// The profiles enforced on writes of `resource_type`.
    pub fn enforced(&self, resource_type: &str) -> &[String] {
        self.enforced.get(resource_type).map_or(&[], Vec::as_slice)
    }

    /// Base R4 validation only: no profile, not even claimed ones.
    pub fn validate_base(&self, resource: &Value) -> Vec<Issue> {
        let Some(type_name) = resource.get("resourceType").and_then(Value::as_str) else {
            return self.validate_with(resource, &[]);
        };
        match (resource, self.defs.type_id(type_name)) {
            (Value::Object(object), Some(ty)) if self.defs.get(ty).kind == Kind::Resource => {
                let mut walk = walk::Walk::new(&self.defs, &self.profiles, resource, type_name);
                walk.walk_resource(object, resource, ty);
                walk.issues
            }
            _ => self.validate_with(resource, &[]),
        }
    }

    /// Validates a resource as the write path does: base R4, every profile
    /// it claims in `meta.profile`, and the profiles enforced for its type.
    pub fn validate(&self, resource: &Value) -> Vec<Issue> {
        let enforced = resource
            .get("resourceType")
            .and_then(Value::as_str)
            .map_or(&[][..], |ty| self.enforced(ty));
        self.validate_with(resource, enforced)
    }

    /// Base R4, every profile the resource claims in `meta.profile`, and the
    /// profiles in `requested` (the `$validate` `profile` parameter,
    /// `validate --profile`), which must be known. What `$validate` and the
    /// `validate` command check.
    pub fn validate_with(&self, resource: &Value, requested: &[String]) -> Vec<Issue> {
        let Value::Object(object) = resource else {
            return vec![Issue::error(
                "structure",
                "a resource must be a JSON object",
            )];
        };
        let Some(Value::String(type_name)) = object.get("resourceType") else {
            return vec![
                Issue::error("required", "the resource has no resourceType").at("resourceType"),
            ];
        };
        let ty = match self.defs.type_id(type_name) {
            Some(ty) if self.defs.get(ty).kind == Kind::Resource => ty,
            _ if self.defs.is_resource_name(type_name) => {
                return vec![Issue {
                    severity: Severity::Warning,
                    code: "informational",
                    diagnostics: format!(
                        "{type_name} is a FHIR R4 resource type this gateway carries but has no definitions for, so it was not checked"
                    ),
                    expression: vec![type_name.clone()],
                }];
            }
            _ => {
                return vec![
                    Issue::error(
                        "code-invalid",
                        format!(
                            "{} is not a FHIR R4 resource type",
                            primitive::quoted(type_name)
                        ),
                    )
                    .at("resourceType"),
                ];
            }
        };
        let mut walk = walk::Walk::new(&self.defs, &self.profiles, resource, type_name);
        walk.walk_resource(object, resource, ty);
        let mut issues = walk.issues;

        // Which profiles apply: requested, then claimed; each once.
        let mut urls: Vec<(&str, bool)> = Vec::new();
        for url in requested {
            urls.push((url, true));
        }
        let claimed = resource
            .pointer("/meta/profile")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str);
        for url in claimed {
            urls.push((url, false));
        }
        let mut seen: Vec<&str> = Vec::new();
        for (url, must_know) in urls {
            let bare = url.split('|').next().unwrap_or(url);
            if seen.contains(&bare) {
                continue;
            }
            seen.push(bare);
            let Some(profile) = self.profiles.get(bare) else {
                issues.push(Issue {
                    severity: if must_know { Severity::Error } else { Severity::Warning },
                    code: "not-supported",
                    diagnostics: format!("profile {url} is not known to this gateway, so the resource was not checked against it"),
                    expression: vec![format!("{type_name}.meta.profile")],
                });
                continue;
            };
            if profile.type_name != *type_name {
                issues.push(
                    Issue::error(
                        "invalid",
                        format!(
                            "profile {} constrains {}, not {type_name}",
                            profile.name, profile.type_name
                        ),
                    )
                    .at(format!("{type_name}.meta.profile")),
                );
                continue;
            }
            let mut conform = conform::Conform::new(&self.defs, profile, resource, type_name);
            conform.run(profile);
            // A profile restating a base rule (class 1..1, subject a Patient)
            // adds nothing where the base walk already found the fault.
            let base_errors: std::collections::HashSet<(String, &str)> = issues
                .iter()
                .filter(|i| i.severity == Severity::Error)
                .map(|i| (i.expression.join(","), i.code))
                .collect();
            conform
                .issues
                .retain(|i| !base_errors.contains(&(i.expression.join(","), i.code)));
            issues.append(&mut conform.issues);
        }
        issues
    }
}

/// Does any issue stop the resource (an error or worse)?
pub fn has_errors(issues: &[Issue]) -> bool {
    issues
        .iter()
        .any(|i| matches!(i.severity, Severity::Error | Severity::Fatal))
}

#[cfg(test)]
mod tests;
