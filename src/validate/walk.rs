//! Base validation: one walk over a resource's JSON against the R4
//! definitions. Known elements only, JSON kinds, cardinality, choice types,
//! primitive formats, `_element` siblings, required codes, Reference targets,
//! contained resources and the core invariants, with every finding located by
//! its FHIRPath expression.
//!
//! The walk borrows the JSON and builds an expression string only when it has
//! something to report.

use super::conform::Conform;
use super::definitions::{Definitions, ElementDef, Invariant, Kind, TypeId};
use super::primitive::{PrimitiveError, quoted};
use super::profile::ProfileSet;
use crate::fhir::outcome::{Issue, Severity};
use crate::fhirpath::Env;
use serde_json::{Map, Value};

/// A step of the path from the resource root to the element at hand.
#[derive(Debug, Clone, Copy)]
pub enum Step<'a> {
    Name(&'a str),
    Index(usize),
}

/// Where the walk is: `Patient`, `name`, `[0]`, `given`, `[1]`.
#[derive(Debug, Default, Clone)]
pub struct Location<'a> {
    steps: Vec<Step<'a>>,
}

impl<'a> Location<'a> {
    pub fn new(root: &'a str) -> Self {
        let mut steps = Vec::with_capacity(16);
        steps.push(Step::Name(root));
        Location { steps }
    }

    pub fn push(&mut self, step: Step<'a>) {
        self.steps.push(step);
    }

    pub fn pop(&mut self) {
        self.steps.pop();
    }

    /// The FHIRPath expression: `Patient.name[0].given[1]`.
    pub fn expression(&self) -> String {
        let mut out = String::with_capacity(48);
        for (i, step) in self.steps.iter().enumerate() {
            match step {
                Step::Name(name) => {
                    if i > 0 {
                        out.push('.');
                    }
                    out.push_str(name);
                }
                Step::Index(n) => {
                    out.push('[');
                    out.push_str(&n.to_string());
                    out.push(']');
                }
            }
        }
        out
    }

    /// The expression of a child element: `Patient.name[0]` + `family`.
    pub fn child(&self, name: &str) -> String {
        let mut out = self.expression();
        out.push('.');
        out.push_str(name);
        out
    }
}

pub struct Walk<'d, 'a> {
    defs: &'d Definitions,
    /// Extension definitions: an extension whose `url` names one is checked
    /// against it wherever it occurs.
    extensions: &'d ProfileSet,
    /// `%rootResource`: the resource at the top, container of `contained`.
    root: &'a Value,
    /// `%resource`: the resource the walk is in (a contained one, or the root).
    resource: &'a Value,
    pub at: Location<'a>,
    pub issues: Vec<Issue>,
    /// The ids of `%rootResource.contained`, once a local reference needs
    /// them (ref-1, checked natively: the FHIRPath form rebuilt the list
    /// for every reference, quadratic in a resource with many of both).
    contained_ids: Option<std::collections::HashSet<&'a str>>,
}

impl<'d, 'a> Walk<'d, 'a> {
    pub fn new(
        defs: &'d Definitions,
        extensions: &'d ProfileSet,
        root: &'a Value,
        root_type: &'a str,
    ) -> Self {
        Walk {
            defs,
            extensions,
            root,
            resource: root,
            at: Location::new(root_type),
            contained_ids: None,
            issues: Vec::new(),
        }
    }

    fn report(&mut self, severity: Severity, code: &'static str, expression: String, text: String) {
        self.issues.push(Issue {
            severity,
            code,
            diagnostics: text,
            expression: vec![expression],
        });
    }

    fn error_here(&mut self, code: &'static str, text: String) {
        let expression = self.at.expression();
        self.report(Severity::Error, code, expression, text);
    }

    /// Walks a resource of a known type (`ty` has kind `Resource`).
    pub fn walk_resource(&mut self, object: &'a Map<String, Value>, value: &'a Value, ty: TypeId) {
        let saved = self.resource;
        self.resource = value;
        self.walk_object(object, ty, None);
        self.check_contained_are_referenced(object);
        self.run_invariants(value, ty);
        self.resource = saved;
    }

    /// Checks every member of `object` against the elements of `ty`.
    fn walk_object(
        &mut self,
        object: &'a Map<String, Value>,
        ty: TypeId,
        targets: Option<&'d [String]>,
    ) {
        let defs = self.defs;
        let def = defs.get(ty);
        let is_resource = def.kind == Kind::Resource;
        let mut values: u64 = 0;
        let mut extensions: u64 = 0;
        let mut children = 0usize;
        for (key, value) in object {
            if is_resource && key == "resourceType" {
                continue;
            }
            if key != "id" {
                children += 1;
            }
            let (name, sibling) = match key.strip_prefix('_') {
                Some(name) => (name, true),
                None => (key.as_str(), false),
            };
            let Some((index, choice)) = def.member(name) else {
                self.unknown_element(key, def.elements.as_slice(), &def.name);
                continue;
            };
            let element = &def.elements[index];
            let bit = 1u64 << index;
            if element.choice && !sibling && values & bit != 0 {
                let names = choice_names(object, element);
                self.report(
                    Severity::Error,
                    "structure",
                    self.at.child(key),
                    format!(
                        "{} may have only one type, but has {}",
                        element.name,
                        names.join(" and ")
                    ),
                );
            }
            if sibling {
                extensions |= bit;
            } else {
                values |= bit;
            }
            self.at.push(Step::Name(key));
            if sibling {
                self.walk_sibling(object, name, value, element, choice);
            } else {
                self.walk_element(object, key, value, element, choice);
            }
            self.at.pop();
        }
        for (index, element) in def.elements.iter().enumerate() {
            if element.min > 0 && (values | extensions) & (1u64 << index) == 0 {
                let shown = element.name.trim_end_matches("[x]");
                self.report(
                    Severity::Error,
                    "required",
                    self.at.child(shown),
                    format!(
                        "{} is required (minimum cardinality {}) but missing",
                        self.at.child(&element.name),
                        element.min
                    ),
                );
            }
        }
        // ele-1 is about elements: a resource with nothing but its type is
        // empty but valid R4 (its profiles may still require members).
        if children == 0 && !is_resource {
            self.error_here(
                "structure",
                "ele-1: an element must have a value or children, but this one is empty"
                    .to_string(),
            );
        }
        if def.name == "Reference" {
            self.check_reference(object, targets);
        }
    }

    /// An element's value: a JSON array for a repeating element, a single
    /// value otherwise.
    fn walk_element(
        &mut self,
        object: &'a Map<String, Value>,
        key: &'a str,
        value: &'a Value,
        element: &'d ElementDef,
        choice: usize,
    ) {
        match (element.many, value) {
            (true, Value::Array(items)) => {
                if items.is_empty() {
                    self.error_here(
                        "structure",
                        "an array must not be empty: leave the element out instead".to_string(),
                    );
                }
                for (i, item) in items.iter().enumerate() {
                    self.at.push(Step::Index(i));
                    if item.is_null() {
                        // A null keeps its place in a primitive array whose
                        // `_element` sibling carries extensions at that index.
                        let paired = object
                            .get(&format!("_{key}"))
                            .and_then(|s| s.get(i))
                            .is_some_and(|s| !s.is_null());
                        if !paired {
                            self.error_here(
                                "structure",
                                "null is not a value: leave the item out instead".to_string(),
                            );
                        }
                    } else {
                        self.check_value(item, element, choice);
                    }
                    self.at.pop();
                }
            }
            (true, _) => self.error_here(
                "structure",
                format!(
                    "{} repeats, so its value must be a JSON array",
                    element.name
                ),
            ),
            (false, Value::Array(_)) => self.error_here(
                "structure",
                format!(
                    "{} does not repeat (maximum cardinality 1), so its value must not be a JSON array",
                    element.name
                ),
            ),
            (false, Value::Null) => self.error_here(
                "structure",
                "null is not a value: leave the element out instead".to_string(),
            ),
            (false, value) => self.check_value(value, element, choice),
        }
    }

    /// `_birthDate`: the id and extensions of a primitive element.
    fn walk_sibling(
        &mut self,
        object: &'a Map<String, Value>,
        name: &str,
        value: &'a Value,
        element: &'d ElementDef,
        choice: usize,
    ) {
        let defs = self.defs;
        let ty = element.types[choice].ty;
        let Some(element_type) = defs.type_id("Element") else {
            return;
        };
        if defs.get(ty).is_primitive().is_none() {
            self.error_here(
                "structure",
                format!(
                    "{} is not a primitive element, so it has no _{name}",
                    element.name
                ),
            );
            return;
        }
        match (element.many, value) {
            (true, Value::Array(items)) => {
                if let Some(Value::Array(primary)) = object.get(name)
                    && primary.len() != items.len()
                {
                    self.error_here(
                        "structure",
                        format!(
                            "_{name} has {} items but {name} has {}: they must pair up by position",
                            items.len(),
                            primary.len()
                        ),
                    );
                }
                for (i, item) in items.iter().enumerate() {
                    if let Value::Object(map) = item {
                        self.at.push(Step::Index(i));
                        self.walk_object(map, element_type, None);
                        self.at.pop();
                    } else if !item.is_null() {
                        self.at.push(Step::Index(i));
                        self.error_here("structure", "must be a JSON object or null".to_string());
                        self.at.pop();
                    }
                }
            }
            (false, Value::Object(map)) => self.walk_object(map, element_type, None),
            _ => self.error_here(
                "structure",
                format!(
                    "must be a JSON {}",
                    if element.many { "array" } else { "object" }
                ),
            ),
        }
    }

    /// One value of an element, of the type `choice` picks.
    fn check_value(&mut self, value: &'a Value, element: &'d ElementDef, choice: usize) {
        let defs = self.defs;
        let element_type = &element.types[choice];
        let def = defs.get(element_type.ty);
        match def.kind {
            Kind::Primitive(primitive) => {
                match primitive.check(value) {
                    Ok(()) => {}
                    Err(PrimitiveError::WrongJson(expected)) => self.error_here(
                        "structure",
                        format!(
                            "{} is a {}, so its value must be {expected}, not {}",
                            element.name,
                            primitive.name(),
                            json_kind(value)
                        ),
                    ),
                    Err(PrimitiveError::Value(text)) => self.error_here("value", text),
                }
                if let (Some(codes), Value::String(code)) = (&element.codes, value)
                    && !codes.iter().any(|c| c == code)
                {
                    self.error_here(
                        "code-invalid",
                        format!(
                            "{} is not a code of the required value set of {} ({})",
                            quoted(code),
                            element.name,
                            codes.join(", ")
                        ),
                    );
                }
            }
            Kind::Complex | Kind::Resource => match value {
                Value::Object(map) => {
                    self.walk_object(map, element_type.ty, element_type.targets.as_deref());
                    self.run_invariants(value, element_type.ty);
                    if def.name == "Extension" {
                        self.check_known_extension(map, value);
                    }
                }
                other => self.error_here(
                    "structure",
                    format!(
                        "{} is a {}, so its value must be a JSON object, not {}",
                        element.name,
                        def.name,
                        json_kind(other)
                    ),
                ),
            },
            Kind::AnyResource => self.check_contained(value),
        }
    }

    /// An extension whose `url` is one of the extension definitions under
    /// `profiles/` must conform to it, wherever it stands.
    fn check_known_extension(&mut self, map: &'a Map<String, Value>, value: &'a Value) {
        let Some(url) = map.get("url").and_then(Value::as_str) else {
            return;
        };
        let Some(definition) = self.extensions.get(url) else {
            return;
        };
        if definition.type_name != "Extension" {
            return;
        }
        let mut conform = Conform::at(self.defs, definition, self.root, self.at.clone());
        conform.apply_to(definition, value);
        self.issues.append(&mut conform.issues);
    }

    fn check_contained(&mut self, value: &'a Value) {
        let Value::Object(map) = value else {
            self.error_here(
                "structure",
                format!(
                    "a contained resource must be a JSON object, not {}",
                    json_kind(value)
                ),
            );
            return;
        };
        let Some(Value::String(type_name)) = map.get("resourceType") else {
            self.error_here(
                "required",
                "a contained resource needs a resourceType".to_string(),
            );
            return;
        };
        let defs = self.defs;
        match defs.type_id(type_name) {
            Some(ty) if defs.get(ty).kind == Kind::Resource => {
                self.walk_resource(map, value, ty);
            }
            _ if defs.is_resource_name(type_name) => {
                let expression = self.at.expression();
                self.report(
                    Severity::Warning,
                    "informational",
                    expression,
                    format!(
                        "a contained {type_name} is carried but not checked: this gateway has definitions for Patient, Encounter, CarePlan and ServiceRequest only"
                    ),
                );
            }
            _ => self.error_here(
                "code-invalid",
                format!("{} is not a FHIR R4 resource type", quoted(type_name)),
            ),
        }
    }

    /// `Type/id`, `Type/id/_history/v`, an absolute URL, `urn:uuid:` /
    /// `urn:oid:` or `#local`; the type must be one the element may refer to.
    fn check_reference(&mut self, object: &'a Map<String, Value>, targets: Option<&[String]>) {
        let Some(Value::String(reference)) = object.get("reference") else {
            return;
        };
        if let Some(id) = reference.strip_prefix('#') {
            // ref-1; `#` alone is the container itself.
            let root = self.root;
            let ids = self.contained_ids.get_or_insert_with(|| {
                root["contained"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|c| c["id"].as_str())
                    .collect()
            });
            if !id.is_empty() && !ids.contains(id) {
                self.error_here(
                    "invariant",
                    format!(
                        "ref-1: SHALL have a contained resource if a local reference is provided ({} names no contained resource)",
                        quoted(reference)
                    ),
                );
            }
            return;
        }
        if reference.starts_with("urn:uuid:") || reference.starts_with("urn:oid:") {
            return;
        }
        let relative = reference
            .strip_prefix("http://")
            .or_else(|| reference.strip_prefix("https://"));
        let segments: Vec<&str> = reference.split('/').collect();
        // The type is the segment before the id (or before `_history/v`).
        let type_at = match segments.as_slice() {
            [.., t, _, "_history", _] => Some(*t),
            [.., t, _] => Some(*t),
            _ => None,
        };
        let type_name = match (relative, type_at) {
            (None, Some(t)) if segments.len() == 2 || segments.len() == 4 => t,
            (Some(_), Some(t)) if self.defs.is_resource_name(t) => t,
            (Some(_), _) => return,
            _ => {
                self.report(
                    Severity::Error,
                    "value",
                    self.at.child("reference"),
                    format!(
                        "{} is not a valid reference: expected Type/id, an absolute URL, urn:uuid:… or #id",
                        quoted(reference)
                    ),
                );
                return;
            }
        };
        if !self.defs.is_resource_name(type_name) {
            self.report(
                Severity::Error,
                "value",
                self.at.child("reference"),
                format!(
                    "{} is not a valid reference: {} is not a FHIR R4 resource type",
                    quoted(reference),
                    quoted(type_name)
                ),
            );
            return;
        }
        if let Some(targets) = targets
            && !targets.iter().any(|t| t == type_name)
        {
            self.report(
                Severity::Error,
                "value",
                self.at.child("reference"),
                format!(
                    "{} refers to a resource of type {type_name}, but this element may refer only to {}",
                    quoted(reference),
                    targets.join(", ")
                ),
            );
        }
    }

    /// dom-3: a contained resource must be referenced from elsewhere in the
    /// resource (or reference the container).
    fn check_contained_are_referenced(&mut self, object: &'a Map<String, Value>) {
        let Some(Value::Array(contained)) = object.get("contained") else {
            return;
        };
        let mut references = Vec::new();
        for (key, value) in object {
            if key != "contained" {
                collect_local_references(value, &mut references, 0);
            }
        }
        for item in contained {
            collect_local_references(item, &mut references, 0);
        }
        let referenced: std::collections::HashSet<&str> = references
            .iter()
            .filter_map(|r| r.strip_prefix('#'))
            .collect();
        for (i, item) in contained.iter().enumerate() {
            let Some(Value::String(id)) = item.get("id") else {
                continue;
            };
            if !referenced.contains(id.as_str()) && !referenced.contains("") {
                self.at.push(Step::Name("contained"));
                self.at.push(Step::Index(i));
                self.error_here(
                    "invariant",
                    format!(
                        "dom-3: the contained resource with id {} is not referenced from anywhere in the resource (expected a reference \"#{id}\")",
                        quoted(id)
                    ),
                );
                self.at.pop();
                self.at.pop();
            }
        }
    }

    fn run_invariants(&mut self, value: &'a Value, ty: TypeId) {
        let def = self.defs.get(ty);
        for invariant in &def.invariants {
            if invariant.shortcut.holds(value) {
                continue;
            }
            let env = Env {
                focus: value,
                focus_type: Some(def.name.as_str()),
                resource: self.resource,
                root: self.root,
                vars: &[],
                unbound: None,
            };
            self.judge(invariant, invariant.expression.is_satisfied(&env));
        }
    }

    /// Records the outcome of an invariant at the current location.
    pub fn judge(
        &mut self,
        invariant: &Invariant,
        outcome: Result<bool, crate::fhirpath::EvalError>,
    ) {
        match outcome {
            Ok(true) => {}
            Ok(false) => {
                let severity = if invariant.error {
                    Severity::Error
                } else {
                    Severity::Warning
                };
                let expression = self.at.expression();
                self.report(
                    severity,
                    "invariant",
                    expression,
                    format!(
                        "{}: {} (FHIRPath: {})",
                        invariant.key,
                        invariant.human,
                        invariant.expression.source()
                    ),
                );
            }
            Err(err) => {
                let expression = self.at.expression();
                self.report(
                    Severity::Warning,
                    "processing",
                    expression,
                    format!("{}: could not be evaluated here: {err}", invariant.key),
                );
            }
        }
    }

    fn unknown_element(&mut self, key: &str, elements: &[ElementDef], owner: &str) {
        let name = key.trim_start_matches('_');
        let hint = elements
            .iter()
            .find(|e| e.choice && name.starts_with(e.name.trim_end_matches("[x]")))
            .map(|e| {
                let types: Vec<&str> = e
                    .types
                    .iter()
                    .map(|t| self.defs.get(t.ty).name.as_str())
                    .collect();
                format!(": {} may be one of {}", e.name, types.join(", "))
            })
            .unwrap_or_default();
        let owner = owner.rsplit('.').next().unwrap_or(owner);
        self.report(
            Severity::Error,
            "structure",
            self.at.child(key),
            format!(
                "unknown element {}: not an element of {owner}{hint}",
                quoted(key)
            ),
        );
    }
}

fn choice_names(object: &Map<String, Value>, element: &ElementDef) -> Vec<String> {
    let stem = element.name.trim_end_matches("[x]");
    object
        .keys()
        .filter(|k| {
            k.starts_with(stem)
                && k.len() > stem.len()
                && k[stem.len()..].starts_with(|c: char| c.is_ascii_uppercase())
        })
        .cloned()
        .collect()
}

/// The most nesting the dom-3 scan follows; FHIR resources are far shallower.
const MAX_SCAN_DEPTH: usize = 64;

fn collect_local_references<'a>(value: &'a Value, out: &mut Vec<&'a str>, depth: usize) {
    if depth > MAX_SCAN_DEPTH {
        return;
    }
    match value {
        Value::Object(map) => {
            for v in map.values() {
                collect_local_references(v, out, depth + 1);
            }
        }
        // A reference, or a canonical or uri (`instantiatesCanonical`)
        // naming a contained resource: dom-3 counts all three.
        Value::String(s) if s.starts_with('#') => out.push(s),
        Value::Array(items) => {
            for item in items {
                collect_local_references(item, out, depth + 1);
            }
        }
        _ => {}
    }
}

pub fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
