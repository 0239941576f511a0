//! Profile validation: applies a compiled [`Profile`] to a resource that has
//! passed through the base walk, visiting only the elements the profile
//! constrains. Every finding names the profile, and the slice or binding
//! where one is concerned.

use super::definitions::Definitions;
use super::primitive::quoted;
use super::profile::{Binding, Node, Profile, Slicing};
use super::walk::{Location, Step, json_kind};
use crate::fhir::outcome::{Issue, Severity};
use crate::fhir::value::{Members, entry};
use crate::fhirpath::Env;
use serde_json::{Map, Value};

pub struct Conform<'p, 'a> {
    defs: &'p Definitions,
    /// The profile's `name`, for diagnostics.
    profile: &'p str,
    root: &'a Value,
    at: Location<'a>,
    pub issues: Vec<Issue>,
}

impl<'p, 'a> Conform<'p, 'a> {
    pub fn new(
        defs: &'p Definitions,
        profile: &'p Profile,
        root: &'a Value,
        root_type: &'a str,
    ) -> Self {
        Conform {
            defs,
            profile: &profile.name,
            root,
            at: Location::new(root_type),
            issues: Vec::new(),
        }
    }

    /// A checker for an element inside a resource (an extension) at `at`.
    pub fn at(
        defs: &'p Definitions,
        profile: &'p Profile,
        root: &'a Value,
        at: Location<'a>,
    ) -> Self {
        Conform {
            defs,
            profile: &profile.name,
            root,
            at,
            issues: Vec::new(),
        }
    }

    pub fn run(&mut self, profile: &'p Profile) {
        self.apply(&profile.root, self.root);
    }

    /// Applies `profile` to `value`, the element at this checker's location.
    pub fn apply_to(&mut self, profile: &'p Profile, value: &'a Value) {
        self.apply(&profile.root, value);
    }

    fn report(&mut self, severity: Severity, code: &'static str, expression: String, text: String) {
        self.issues.push(Issue {
            severity,
            code,
            diagnostics: format!("{text} (profile {})", self.profile),
            expression: vec![expression],
        });
    }

    fn here(&mut self, severity: Severity, code: &'static str, text: String) {
        let expression = self.at.expression();
        self.report(severity, code, expression, text);
    }

    /// The rules of `node` on one value, then its children's.
    fn apply(&mut self, node: &'p Node, value: &'a Value) {
        if let Some(fixed) = &node.fixed
            && !same_value(value, fixed)
        {
            self.here(
                Severity::Error,
                "value",
                format!("must be exactly {} but is {}", fixed, shown(value)),
            );
        }
        if let Some(pattern) = &node.pattern
            && !matches_pattern(value, pattern)
        {
            self.here(
                Severity::Error,
                "value",
                format!("must match the pattern {pattern} but is {}", shown(value)),
            );
        }
        if let Some(binding) = &node.binding {
            self.check_binding(binding, value);
        }
        if let Some(targets) = &node.targets {
            self.check_targets(targets, value);
        }
        for constraint in &node.constraints {
            if constraint.shortcut.holds(value) {
                continue;
            }
            let env = Env {
                focus: value,
                focus_type: None,
                resource: self.root,
                root: self.root,
                vars: &[],
                unbound: None,
            };
            match constraint.expression.is_satisfied(&env) {
                Ok(true) => {}
                Ok(false) => self.here(
                    if constraint.error {
                        Severity::Error
                    } else {
                        Severity::Warning
                    },
                    "invariant",
                    format!(
                        "{}: {}{}",
                        constraint.key,
                        constraint.human,
                        match value {
                            Value::String(s) => format!(" ({} fails)", quoted(s)),
                            _ => String::new(),
                        }
                    ),
                ),
                Err(err) => self.here(
                    Severity::Warning,
                    "processing",
                    format!("{}: could not be evaluated here: {err}", constraint.key),
                ),
            }
        }
        // Extensions typed with a definition (`node.extension_profile`) are
        // checked against it by the base walk, which checks every extension
        // whose url it knows, in a slice or not.
        if let Value::Object(_) = value {
            for (name, child) in &node.children {
                self.apply_element(value, name, child);
            }
        }
    }

    /// A child element of `parent`: its cardinality and types, then each item.
    fn apply_element(&mut self, parent: &'a Value, name: &'p str, node: &'p Node) {
        let Value::Object(object) = parent else {
            return;
        };
        if let Some(stem) = name.strip_suffix("[x]") {
            self.apply_choice(object, stem, name, node);
            return;
        }
        let found = entry(object, name);
        let count = match found {
            Some((_, Value::Array(list))) => list.iter().filter(|v| !v.is_null()).count(),
            Some(_) => 1,
            // `_birthDate` alone (extensions, no value) still counts as present.
            None if node.min.unwrap_or(0) > 0 => {
                usize::from(object.keys().any(|k| k.strip_prefix('_') == Some(name)))
            }
            None => 0,
        };
        self.check_cardinality(node, name, count, None);
        // With the element itself missing below its minimum, the slices'
        // minimums say nothing more; absent but allowed to be, a slice
        // that must be there is still missing.
        if found.is_none()
            && count >= node.min.unwrap_or(0) as usize
            && let Some(slicing) = &node.slicing
        {
            self.apply_slicing(slicing, name, &[]);
        }
        let Some((key, value)) = found else {
            return;
        };
        match value {
            Value::Array(list) => {
                for (i, item) in list.iter().enumerate().filter(|(_, v)| !v.is_null()) {
                    self.at.push(Step::Name(key));
                    self.at.push(Step::Index(i));
                    self.apply(node, item);
                    self.at.pop();
                    self.at.pop();
                }
            }
            other => {
                self.at.push(Step::Name(key));
                self.apply(node, other);
                self.at.pop();
            }
        }
        // With the element itself missing below its minimum, the slices'
        // minimums say nothing more.
        if let Some(slicing) = &node.slicing
            && count >= node.min.unwrap_or(0) as usize
        {
            let items: Vec<(&'a str, Option<usize>, &'a Value)> = match value {
                Value::Array(list) => list
                    .iter()
                    .enumerate()
                    .filter(|(_, v)| !v.is_null())
                    .map(|(i, v)| (key.as_str(), Some(i), v))
                    .collect(),
                other => vec![(key.as_str(), None, other)],
            };
            self.apply_slicing(slicing, name, &items);
        }
    }

    /// A choice element (`occurrence[x]`): whichever `occurrenceDateTime`,
    /// `occurrencePeriod`… is present, of a type the profile allows.
    fn apply_choice(
        &mut self,
        object: &'a Map<String, Value>,
        stem: &str,
        name: &'p str,
        node: &'p Node,
    ) {
        let mut count = 0;
        for (key, value) in object {
            let Some(suffix) = key.strip_prefix(stem) else {
                continue;
            };
            if !suffix.starts_with(|c: char| c.is_ascii_uppercase()) {
                continue;
            }
            count += 1;
            if let Some(types) = &node.types
                && !types.iter().any(|t| t.eq_ignore_ascii_case(suffix))
            {
                self.report(
                    Severity::Error,
                    "structure",
                    self.at.child(key),
                    format!(
                        "{key} is not allowed: {name} may be only {}",
                        types.join(" or ")
                    ),
                );
            }
            self.at.push(Step::Name(key));
            self.apply(node, value);
            self.at.pop();
        }
        self.check_cardinality(node, name, count, None);
    }

    fn check_cardinality(
        &mut self,
        node: &Node,
        name: &str,
        count: usize,
        slice: Option<(&str, &str)>,
    ) {
        let below = node.min.filter(|&min| count < min as usize);
        let above = node.max.flatten().filter(|&max| count > max as usize);
        if below.is_none() && above.is_none() {
            return;
        }
        let expression = self.at.child(name.strip_suffix("[x]").unwrap_or(name));
        let what = match slice {
            Some((slice, rule)) => format!("slice {expression}:{slice} ({rule})"),
            None => expression.clone(),
        };
        if let Some(min) = below {
            self.report(
                Severity::Error,
                "required",
                expression.clone(),
                format!("{what}: at least {min} required, found {count}"),
            );
        }
        if let Some(max) = above {
            self.report(
                Severity::Error,
                "structure",
                expression,
                format!("{what}: at most {max} allowed, found {count}"),
            );
        }
    }

    /// Sorts items into slices by their discriminator value, checks each
    /// slice's cardinality and applies its rules.
    fn apply_slicing(
        &mut self,
        slicing: &'p Slicing,
        name: &str,
        items: &[(&'a str, Option<usize>, &'a Value)],
    ) {
        let mut counts = vec![0usize; slicing.slices.len()];
        for &(key, index, value) in items {
            let mut matched = false;
            for (s, slice) in slicing.slices.iter().enumerate() {
                let Some(wanted) = &slice.discriminator else {
                    continue;
                };
                if has_value_at(value, &slicing.path, wanted) {
                    matched = true;
                    counts[s] += 1;
                    self.at.push(Step::Name(key));
                    if let Some(i) = index {
                        self.at.push(Step::Index(i));
                    }
                    self.apply(&slice.node, value);
                    if index.is_some() {
                        self.at.pop();
                    }
                    self.at.pop();
                }
            }
            if !matched && slicing.closed {
                self.at.push(Step::Name(key));
                if let Some(i) = index {
                    self.at.push(Step::Index(i));
                }
                let names: Vec<&str> = slicing.slices.iter().map(|s| s.name.as_str()).collect();
                self.here(
                    Severity::Error,
                    "structure",
                    format!(
                        "matches none of the slices of {name} ({}) by {}, and the slicing is closed",
                        names.join(", "),
                        slicing.path
                    ),
                );
                if index.is_some() {
                    self.at.pop();
                }
                self.at.pop();
            }
        }
        for (slice, count) in slicing.slices.iter().zip(counts) {
            let rule = match &slice.discriminator {
                Some(value) => format!("{} = {value}", slicing.path),
                None => "no discriminator".to_string(),
            };
            self.check_cardinality(&slice.node, name, count, Some((&slice.name, &rule)));
        }
    }

    fn check_binding(&mut self, binding: &Binding, value: &'a Value) {
        let Some(codes) = &binding.codes else {
            return;
        };
        // A `code` has its system implied by the binding; a Coding's code
        // without a system has no defined meaning, so it is in no value set.
        let implied = matches!(value, Value::String(_));
        let codings: Vec<(Option<&str>, &str)> = match value {
            Value::String(code) => vec![(None, code.as_str())],
            Value::Object(map) => match map.member("coding") {
                Some(coding) => coding
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|c| Some((c.at("system").as_str(), c.at("code").as_str()?)))
                    .collect(),
                None => match map.member("code").and_then(Value::as_str) {
                    Some(code) => vec![(map.member("system").and_then(Value::as_str), code)],
                    None => Vec::new(),
                },
            },
            _ => return,
        };
        let verdicts: Vec<Option<bool>> = codings
            .iter()
            .map(|(s, c)| match s {
                None if !implied => Some(false),
                _ => codes.contains(*s, c),
            })
            .collect();
        // One coding in the value set is enough: one that cannot be
        // decided (its system not expanded here) might be.
        if verdicts.contains(&Some(true)) || verdicts.contains(&None) {
            return;
        }
        let shown_codes: Vec<String> = codings
            .iter()
            .map(|(s, c)| match s {
                Some(s) => format!("{s}|{c}"),
                None => (*c).to_string(),
            })
            .collect();
        let got = if shown_codes.is_empty() {
            "no code".to_string()
        } else if !implied && codings.iter().any(|(s, _)| s.is_none()) {
            format!("{} (a code with no system)", shown_codes.join(", "))
        } else {
            shown_codes.join(", ")
        };
        let (severity, strength) = if binding.required {
            (Severity::Error, "required")
        } else {
            (Severity::Warning, "extensible")
        };
        self.here(
            severity,
            "code-invalid",
            format!(
                "{got} is not in the value set {} ({}) bound with {strength} strength",
                binding.value_set,
                codes.describe()
            ),
        );
    }

    fn check_targets(&mut self, targets: &[String], value: &'a Value) {
        let Some(reference) = value.member("reference").and_then(Value::as_str) else {
            return;
        };
        if reference.starts_with('#') || reference.starts_with("urn:") {
            return;
        }
        let segments: Vec<&str> = reference.split('/').collect();
        let type_name = match segments.as_slice() {
            [.., t, _, "_history", _] | [.., t, _] => *t,
            _ => return,
        };
        // A type that is not a resource type at all is the base walk's finding.
        if self.defs.is_resource_name(type_name)
            && !targets.iter().any(|t| t == type_name || t == "Resource")
        {
            self.report(
                Severity::Error,
                "value",
                self.at.child("reference"),
                format!(
                    "{} refers to a resource of type {type_name}, but the profile allows only {}",
                    quoted(reference),
                    targets.join(", ")
                ),
            );
        }
    }
}

/// Does the value hold `wanted` at a dotted path (through arrays)?
fn has_value_at(value: &Value, path: &str, wanted: &str) -> bool {
    fn walk(value: &Value, steps: &[&str], wanted: &str) -> bool {
        match (value, steps) {
            (Value::Array(items), _) => items.iter().any(|v| walk(v, steps, wanted)),
            (Value::String(s), []) => s == wanted,
            (Value::Object(map), [first, rest @ ..]) => {
                map.get(*first).is_some_and(|v| walk(v, rest, wanted))
            }
            _ => false,
        }
    }
    let steps: Vec<&str> = path.split('.').collect();
    walk(value, &steps, wanted)
}

/// Equality as FHIR means it for fixed values: numbers by value.
fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same_value(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_value(v, w)))
        }
        _ => a == b,
    }
}

/// A pattern matches when every member it has is matched in the value;
/// each item of a pattern array must match some item of the value's array.
fn matches_pattern(value: &Value, pattern: &Value) -> bool {
    match (value, pattern) {
        (Value::Object(v), Value::Object(p)) => p
            .iter()
            .all(|(k, pv)| v.get(k).is_some_and(|vv| matches_pattern(vv, pv))),
        (Value::Array(v), Value::Array(p)) => p
            .iter()
            .all(|pv| v.iter().any(|vv| matches_pattern(vv, pv))),
        _ => same_value(value, pattern),
    }
}

fn shown(value: &Value) -> String {
    match value {
        Value::String(s) => quoted(s),
        Value::Object(_) | Value::Array(_) => json_kind(value).to_string(),
        other => other.to_string(),
    }
}
