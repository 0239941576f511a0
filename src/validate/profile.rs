//! Local profiles: StructureDefinitions written as differentials under
//! `profiles/`, compiled at start-up into a tree of rules per profile. The tree
//! holds only what the differential constrains, so applying a profile walks
//! only the constrained parts of a resource ([`super::conform`]).
//!
//! Supported: min/max, `fixed[x]`, `pattern[x]`, type restrictions (choice
//! types and Reference `targetProfile`), bindings (required, extensible), value
//! slicing (Identifier by `system`, CodeableConcept by `coding.system`, Coding
//! by `system`, extensions by `url`), extension profiles, and FHIRPath
//! constraints. Anything else in a differential is reported by
//! [`ProfileSet::problems`] (`check-profiles`) and ignored.

use super::definitions::{Definitions, Invariant, Kind, Shortcut};
use super::terminology::{ValueSetCodes, expand_value_sets};
use crate::fhirpath::Expression;
use crate::hashing::FastMap;
use serde_json::Value;
use std::sync::Arc;

/// The profile canonicals of the contract, enforced on writes by default.
pub const ONE_BROMLEY_PROFILES: [&str; 4] = [
    "https://fhir.onebromley.nhs.uk/StructureDefinition/OneBromley-Patient",
    "https://fhir.onebromley.nhs.uk/StructureDefinition/OneBromley-Encounter",
    "https://fhir.onebromley.nhs.uk/StructureDefinition/OneBromley-CarePlan",
    "https://fhir.onebromley.nhs.uk/StructureDefinition/OneBromley-ServiceRequest",
];

macro_rules! embed {
    ($file:literal) => {
        ($file, include_str!(concat!("../../profiles/", $file)))
    };
}

/// The conformance resources shipped in `profiles/`, built into the binary
/// so that a fresh clone runs without a profiles directory to hand.
pub const EMBEDDED: &[(&str, &str)] = &[
    embed!("CodeSystem-UKCore-NHSNumberVerificationStatusEngland.json"),
    embed!("CodeSystem-care-pathway.json"),
    embed!("CodeSystem-pathway-referral.json"),
    embed!("StructureDefinition-Extension-OneBromley-EncounterLocationReported.json"),
    embed!("StructureDefinition-Extension-OneBromley-NationalDataOptOut.json"),
    embed!("StructureDefinition-Extension-UKCore-NHSNumberVerificationStatus.json"),
    embed!("StructureDefinition-OneBromley-CarePlan.json"),
    embed!("StructureDefinition-OneBromley-Encounter.json"),
    embed!("StructureDefinition-OneBromley-Patient.json"),
    embed!("StructureDefinition-OneBromley-ServiceRequest.json"),
    embed!("ValueSet-UKCore-NHSNumberVerificationStatus.json"),
    embed!("ValueSet-care-pathway.json"),
    embed!("ValueSet-encounter-class.json"),
    embed!("ValueSet-encounter-priority.json"),
    embed!("ValueSet-pathway-referral.json"),
];

/// A compiled profile (or extension definition).
#[derive(Debug)]
pub struct Profile {
    pub url: String,
    /// `name`, for diagnostics: `OneBromley-Patient`.
    pub name: String,
    /// The type it constrains: `Patient`, `Extension`.
    pub type_name: String,
    pub root: Node,
}

/// The rules a profile puts on one element (and, below it, its children).
#[derive(Debug, Default)]
pub struct Node {
    pub min: Option<u32>,
    /// `None`: unchanged; `Some(None)`: `*`.
    pub max: Option<Option<u32>>,
    pub fixed: Option<Value>,
    pub pattern: Option<Value>,
    /// Allowed types of a choice element (`dateTime`, `Period`).
    pub types: Option<Vec<String>>,
    /// Allowed Reference targets (resource type names).
    pub targets: Option<Vec<String>>,
    /// For an extension slice: the extension definition's canonical.
    pub extension_profile: Option<String>,
    pub binding: Option<Binding>,
    pub constraints: Vec<Invariant>,
    pub slicing: Option<Slicing>,
    /// Children by element name as in the path (`value`, `occurrence[x]`).
    pub children: Vec<(String, Node)>,
}

#[derive(Debug)]
pub struct Binding {
    pub required: bool,
    pub value_set: String,
    /// `None` when the ValueSet is not under `profiles/`.
    pub codes: Option<Arc<ValueSetCodes>>,
}

#[derive(Debug)]
pub struct Slicing {
    /// The discriminator path: `system`, `url`, `coding.system`.
    pub path: String,
    pub closed: bool,
    pub slices: Vec<Slice>,
}

#[derive(Debug)]
pub struct Slice {
    pub name: String,
    /// The value an item holds at the discriminator path to be in this slice.
    pub discriminator: Option<String>,
    pub node: Node,
}

impl Node {
    /// Removes children that constrain nothing, below as well.
    fn prune(&mut self) {
        for (_, child) in &mut self.children {
            child.prune();
        }
        self.children.retain(|(_, child)| !child.is_empty());
        if let Some(slicing) = &mut self.slicing {
            for slice in &mut slicing.slices {
                slice.node.prune();
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.min.is_none()
            && self.max.is_none()
            && self.fixed.is_none()
            && self.pattern.is_none()
            && self.types.is_none()
            && self.targets.is_none()
            && self.extension_profile.is_none()
            && self.binding.is_none()
            && self.constraints.is_empty()
            && self.slicing.is_none()
            && self.children.is_empty()
    }

    pub fn child(&self, name: &str) -> Option<&Node> {
        self.children
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, n)| n)
    }

    fn child_mut(&mut self, name: &str) -> &mut Node {
        if let Some(i) = self.children.iter().position(|(n, _)| n == name) {
            return &mut self.children[i].1;
        }
        self.children.push((name.to_string(), Node::default()));
        let last = self.children.len() - 1;
        &mut self.children[last].1
    }
}

/// All profiles, extension definitions and value sets, compiled.
#[derive(Debug, Default)]
pub struct ProfileSet {
    profiles: FastMap<String, Arc<Profile>>,
    /// What `check-profiles` reports: things compiled around or ignored.
    problems: Vec<String>,
}

/// A profile set that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("{file}: {message}")]
    Invalid { file: String, message: String },
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

impl ProfileSet {
    /// The profiles built into the binary (a copy of `profiles/`).
    pub fn embedded(defs: &Definitions) -> Result<ProfileSet, ProfileError> {
        let files = EMBEDDED
            .iter()
            .map(|(name, text)| (name.to_string(), text.to_string()))
            .collect::<Vec<_>>();
        Self::compile(defs, &files)
    }

    /// Every `*.json` file of a directory.
    pub fn from_dir(defs: &Definitions, dir: &std::path::Path) -> Result<ProfileSet, ProfileError> {
        let io = |source| ProfileError::Io {
            path: dir.display().to_string(),
            source,
        };
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io)? {
            let path = entry.map_err(io)?.path();
            if path.extension().is_some_and(|e| e == "json") {
                let text = std::fs::read_to_string(&path).map_err(|source| ProfileError::Io {
                    path: path.display().to_string(),
                    source,
                })?;
                let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
                files.push((name.unwrap_or_default(), text));
            }
        }
        files.sort();
        Self::compile(defs, &files)
    }

    pub fn compile(
        defs: &Definitions,
        files: &[(String, String)],
    ) -> Result<ProfileSet, ProfileError> {
        let mut resources = Vec::new();
        for (file, text) in files {
            let value: Value = serde_json::from_str(text).map_err(|e| ProfileError::Invalid {
                file: file.clone(),
                message: format!("not JSON: {e}"),
            })?;
            resources.push((file.clone(), value));
        }
        let (value_sets, mut problems) = expand_value_sets(&resources);
        let value_sets: FastMap<String, Arc<ValueSetCodes>> = value_sets
            .into_iter()
            .map(|(k, v)| (k, Arc::new(v)))
            .collect();
        let mut profiles = FastMap::default();
        for (file, resource) in &resources {
            if resource["resourceType"] != "StructureDefinition" {
                continue;
            }
            let profile = compile_profile(defs, file, resource, &value_sets, &mut problems)?;
            profiles.insert(profile.url.clone(), Arc::new(profile));
        }
        // Every extension slice must name an extension we hold.
        for profile in profiles.values() {
            let mut missing = Vec::new();
            missing_extensions(&profile.root, &profiles, &mut missing);
            for url in missing {
                problems.push(format!(
                    "{}: extension {url} is not defined under profiles/, so its content is not checked",
                    profile.name
                ));
            }
        }
        Ok(ProfileSet { profiles, problems })
    }

    pub fn get(&self, url: &str) -> Option<&Arc<Profile>> {
        // A canonical may carry a version: `url|0.1.0`.
        let url = url.split('|').next().unwrap_or(url);
        self.profiles.get(url)
    }

    pub fn problems(&self) -> &[String] {
        &self.problems
    }

    pub fn urls(&self) -> impl Iterator<Item = &str> {
        self.profiles.keys().map(String::as_str)
    }
}

fn missing_extensions(
    node: &Node,
    profiles: &FastMap<String, Arc<Profile>>,
    out: &mut Vec<String>,
) {
    if let Some(url) = &node.extension_profile
        && !profiles.contains_key(url)
    {
        out.push(url.clone());
    }
    for (_, child) in &node.children {
        missing_extensions(child, profiles, out);
    }
    if let Some(slicing) = &node.slicing {
        for slice in &slicing.slices {
            missing_extensions(&slice.node, profiles, out);
        }
    }
}

fn compile_profile(
    defs: &Definitions,
    file: &str,
    sd: &Value,
    value_sets: &FastMap<String, Arc<ValueSetCodes>>,
    problems: &mut Vec<String>,
) -> Result<Profile, ProfileError> {
    let invalid = |message: String| ProfileError::Invalid {
        file: file.to_string(),
        message,
    };
    let url = sd["url"]
        .as_str()
        .ok_or_else(|| invalid("no url".to_string()))?;
    let type_name = sd["type"]
        .as_str()
        .ok_or_else(|| invalid("no type".to_string()))?;
    // The id reads as people write it (`OneBromley-Patient`); `name` is the
    // computable form (`OneBromleyPatient`).
    let name = sd["id"]
        .as_str()
        .or(sd["name"].as_str())
        .unwrap_or(url)
        .to_string();
    let Some(type_id) = defs.type_id(type_name) else {
        return Err(invalid(format!(
            "type {type_name} is not one the gateway has definitions for"
        )));
    };
    if !matches!(defs.get(type_id).kind, Kind::Resource | Kind::Complex) {
        return Err(invalid(format!("type {type_name} cannot be profiled here")));
    }
    if sd["derivation"] != "constraint" {
        problems.push(format!("{file}: derivation is not \"constraint\""));
    }
    let mut root = Node::default();
    let elements = sd["differential"]["element"]
        .as_array()
        .ok_or_else(|| invalid("no differential.element".to_string()))?;
    for element in elements {
        let id = element["id"]
            .as_str()
            .or_else(|| element["path"].as_str())
            .ok_or_else(|| invalid("an element without id or path".to_string()))?;
        let mut segments = id.split('.');
        if segments.next() != Some(type_name) {
            return Err(invalid(format!("element {id} is not under {type_name}")));
        }
        let path: Vec<&str> = id
            .split('.')
            .skip(1)
            .map(|seg| seg.split(':').next().unwrap_or(seg))
            .collect();
        if !path_exists(defs, type_id, &path) {
            problems.push(format!(
                "{file}: {id}: {type_name}.{} is not an element of {type_name} in FHIR R4; the rule is ignored",
                path.join(".")
            ));
            continue;
        }
        // Walk down to the node the id names, creating nodes and slices.
        let mut node = &mut root;
        for segment in segments {
            let (name, slice) = match segment.split_once(':') {
                Some((name, slice)) => (name, Some(slice)),
                None => (segment, None),
            };
            node = node.child_mut(name);
            if let Some(slice) = slice {
                let slicing = node.slicing.get_or_insert_with(|| Slicing {
                    path: String::new(),
                    closed: false,
                    slices: Vec::new(),
                });
                let index = match slicing.slices.iter().position(|s| s.name == slice) {
                    Some(i) => i,
                    None => {
                        slicing.slices.push(Slice {
                            name: slice.to_string(),
                            discriminator: None,
                            node: Node::default(),
                        });
                        slicing.slices.len() - 1
                    }
                };
                node = &mut slicing.slices[index].node;
            }
        }
        apply_element(node, element, id, url, value_sets, problems, file)?;
    }
    resolve_discriminators(&mut root, &name, problems);
    // Elements the differential only mentions (mustSupport, documentation)
    // carry no rule: dropping them keeps validation to the constrained parts.
    root.prune();
    Ok(Profile {
        url: url.to_string(),
        name,
        type_name: type_name.to_string(),
        root,
    })
}

/// Is `path` (element names below the type, slice names removed) an
/// element of the type? Through a choice element, any of its types may hold
/// the rest of the path.
fn path_exists(defs: &Definitions, ty: super::definitions::TypeId, path: &[&str]) -> bool {
    let Some((first, rest)) = path.split_first() else {
        return true;
    };
    let def = defs.get(ty);
    let Some(element) = def.elements.iter().find(|e| e.name == *first) else {
        return false;
    };
    element.types.iter().any(|t| path_exists(defs, t.ty, rest))
}

fn apply_element(
    node: &mut Node,
    element: &Value,
    id: &str,
    source: &str,
    value_sets: &FastMap<String, Arc<ValueSetCodes>>,
    problems: &mut Vec<String>,
    file: &str,
) -> Result<(), ProfileError> {
    let invalid = |message: String| ProfileError::Invalid {
        file: file.to_string(),
        message: format!("{id}: {message}"),
    };
    let Some(object) = element.as_object() else {
        return Err(invalid("not an object".to_string()));
    };
    for (key, value) in object {
        match key.as_str() {
            "id" | "path" | "sliceName" | "short" | "definition" | "comment" | "requirements"
            | "alias" | "mustSupport" | "isModifier" | "isSummary" | "label" | "meaning"
            | "isModifierReason" | "mapping" | "example" | "base" => {}
            "min" => {
                node.min = Some(
                    value
                        .as_u64()
                        .and_then(|v| u32::try_from(v).ok())
                        .ok_or_else(|| invalid("min must be a whole number".to_string()))?,
                );
            }
            "max" => {
                node.max = Some(match value.as_str() {
                    Some("*") => None,
                    Some(n) => Some(n.parse().map_err(|_| invalid(format!("bad max {n}")))?),
                    None => return Err(invalid("max must be a string".to_string())),
                });
            }
            "type" => compile_types(node, value, id, problems),
            "binding" => {
                let strength = value["strength"].as_str().unwrap_or_default();
                let Some(vs) = value["valueSet"].as_str() else {
                    problems.push(format!("{file}: {id}: a binding without a valueSet"));
                    continue;
                };
                let vs = vs.split('|').next().unwrap_or(vs);
                if !matches!(strength, "required" | "extensible") {
                    continue;
                }
                let codes = value_sets.get(vs).cloned();
                if codes.is_none() {
                    problems.push(format!(
                        "{file}: {id}: ValueSet {vs} is not under profiles/, so the binding is not checked"
                    ));
                }
                node.binding = Some(Binding {
                    required: strength == "required",
                    value_set: vs.to_string(),
                    codes,
                });
            }
            "constraint" => {
                for constraint in value.as_array().into_iter().flatten() {
                    let key = constraint["key"].as_str().unwrap_or("?");
                    let Some(expression) = constraint["expression"].as_str() else {
                        problems.push(format!("{file}: {id}: constraint {key} has no expression"));
                        continue;
                    };
                    // Two of the local profiles' constraints, word for
                    // word, are checked natively where they plainly hold.
                    let shortcut = Shortcut::of_expression(expression);
                    let expression = Expression::parse(expression)
                        .map_err(|e| invalid(format!("constraint {key}: {e}")))?;
                    node.constraints.push(Invariant {
                        key: key.to_string(),
                        error: constraint["severity"] != "warning",
                        human: constraint["human"].as_str().unwrap_or_default().to_string(),
                        expression,
                        shortcut,
                    });
                }
            }
            "slicing" => {
                let discriminators = value["discriminator"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                let path = match discriminators.as_slice() {
                    [d] if d["type"] == "value" || d["type"] == "pattern" => {
                        d["path"].as_str().unwrap_or_default().to_string()
                    }
                    _ => {
                        problems.push(format!(
                            "{file}: {id}: only one value discriminator is supported; slicing ignored"
                        ));
                        continue;
                    }
                };
                let slicing = node.slicing.get_or_insert_with(|| Slicing {
                    path: String::new(),
                    closed: false,
                    slices: Vec::new(),
                });
                slicing.path = path;
                slicing.closed = value["rules"] == "closed";
            }
            k if k.starts_with("fixed") => node.fixed = Some(value.clone()),
            k if k.starts_with("pattern") => node.pattern = Some(value.clone()),
            other => problems.push(format!(
                "{file}: {id}: {other} is not supported and is ignored"
            )),
        }
    }
    let _ = source;
    Ok(())
}

fn compile_types(node: &mut Node, types: &Value, id: &str, problems: &mut Vec<String>) {
    let mut codes = Vec::new();
    let mut targets = Vec::new();
    for ty in types.as_array().into_iter().flatten() {
        let Some(code) = ty["code"].as_str() else {
            continue;
        };
        codes.push(code.to_string());
        for target in ty["targetProfile"].as_array().into_iter().flatten() {
            if let Some(t) = target.as_str() {
                match t.strip_prefix("http://hl7.org/fhir/StructureDefinition/") {
                    Some(name) => targets.push(name.to_string()),
                    None => problems.push(format!(
                        "{id}: targetProfile {t} is not a base resource; only the resource type is checked"
                    )),
                }
            }
        }
        if code == "Extension"
            && let Some(profile) = ty["profile"]
                .as_array()
                .and_then(|p| p.first())
                .and_then(Value::as_str)
        {
            node.extension_profile = Some(profile.to_string());
        }
    }
    if !targets.is_empty() {
        node.targets = Some(targets);
    }
    node.types = Some(codes);
}

/// Finds each slice's discriminating value: the fixed or pattern value at
/// the slicing path inside the slice (or the extension's url).
fn resolve_discriminators(node: &mut Node, profile: &str, problems: &mut Vec<String>) {
    if let Some(slicing) = &mut node.slicing {
        for slice in &mut slicing.slices {
            slice.discriminator = if slicing.path == "url" {
                slice.node.extension_profile.clone()
            } else {
                discriminator_value(&slice.node, &slicing.path)
            };
            if slice.discriminator.is_none() {
                problems.push(format!(
                    "{profile}: slice {} has no fixed or pattern value at {}, so no item can be told to be in it",
                    slice.name, slicing.path
                ));
            }
            resolve_discriminators(&mut slice.node, profile, problems);
        }
    }
    for (_, child) in &mut node.children {
        resolve_discriminators(child, profile, problems);
    }
}

fn discriminator_value(node: &Node, path: &str) -> Option<String> {
    let mut current = node;
    let mut rest = path.split('.').peekable();
    // A pattern on the slice itself: follow the path into it.
    if let Some(pattern) = node.pattern.as_ref().or(node.fixed.as_ref()) {
        let mut value = pattern;
        for step in path.split('.') {
            value = match value {
                Value::Array(items) => items.first()?.get(step)?,
                other => other.get(step)?,
            };
        }
        return value.as_str().map(str::to_string);
    }
    while let Some(step) = rest.next() {
        current = current.child(step)?;
        if rest.peek().is_none() {
            return current
                .fixed
                .as_ref()
                .or(current.pattern.as_ref())
                .and_then(Value::as_str)
                .map(str::to_string);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compiles_the_embedded_profiles() {
        let defs = Definitions::r4().unwrap();
        let set = ProfileSet::embedded(&defs).unwrap();
        let patient = set.get(ONE_BROMLEY_PROFILES[0]).unwrap();
        let identifier = patient.root.child("identifier").unwrap();
        let slicing = identifier.slicing.as_ref().unwrap();
        assert_eq!(slicing.path, "system");
        let nhs = slicing
            .slices
            .iter()
            .find(|s| s.name == "nhsNumber")
            .unwrap();
        assert_eq!(
            nhs.discriminator.as_deref(),
            Some("https://fhir.nhs.uk/Id/nhs-number")
        );
        assert_eq!(
            nhs.node.child("value").unwrap().constraints[0].key,
            "ob-nhs-1"
        );
        for url in ONE_BROMLEY_PROFILES {
            assert!(set.get(url).is_some(), "{url}");
        }
        assert!(set.problems().is_empty(), "{:#?}", set.problems());
    }
}
