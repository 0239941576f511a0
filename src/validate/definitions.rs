//! The FHIR R4 base definitions, compiled from `r4.defs` into tables the
//! structure walk reads: for every type, its elements, their cardinality,
//! types, required codes and Reference targets, and the JSON member names that
//! reach them (choice elements expand to `valueString`, `valueQuantity`, …).
//!
//! This module owns the shape of FHIR; what the shapes mean for a given value
//! is [`super::primitive`] and [`super::walk`].

use super::primitive::Primitive;
use crate::fhir::value::Members;
use crate::fhirpath::Expression;
use crate::hashing::FastMap;

/// The definitions text, derived from the official R4 JSON schema (see its
/// header for provenance and format).
const R4_DEFS: &str = include_str!("r4.defs");

/// An index into [`Definitions::types`].
pub type TypeId = u16;

/// The largest number of elements a type may have: presence is tracked in a
/// `u64` bit set per object.
const MAX_ELEMENTS: usize = 64;

#[derive(Debug)]
pub struct Definitions {
    types: Vec<TypeDef>,
    by_name: FastMap<String, TypeId>,
    /// Every R4 resource type name, for checking `Type/id` references.
    resource_names: Vec<String>,
    /// The type of `contained` entries: a resource of any type.
    pub resource: TypeId,
}

#[derive(Debug)]
pub struct TypeDef {
    /// `Patient`, `HumanName`, or a backbone element's path (`Patient.contact`).
    pub name: String,
    pub kind: Kind,
    pub elements: Vec<ElementDef>,
    /// JSON member name → (element index, index into that element's types),
    /// sorted by [`by_length`] for binary search.
    members: Vec<(Box<str>, u16, u16)>,
    pub invariants: Vec<Invariant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Primitive(Primitive),
    /// A datatype or a backbone element.
    Complex,
    /// One of the resource types the walk knows.
    Resource,
    /// `contained[i]`: any resource, told apart by `resourceType`.
    AnyResource,
}

#[derive(Debug)]
pub struct ElementDef {
    /// The element's name as the spec writes it: `gender`, `deceased[x]`.
    pub name: String,
    pub min: u32,
    /// `false`: at most one (a JSON value); `true`: repeating (a JSON array).
    pub many: bool,
    pub types: Vec<ElementType>,
    /// The codes of a required binding on a `code` element.
    pub codes: Option<Vec<String>>,
    pub choice: bool,
}

#[derive(Debug)]
pub struct ElementType {
    pub ty: TypeId,
    /// For a Reference: the resource types it may point at (`None`: any).
    pub targets: Option<Vec<String>>,
}

/// A FHIRPath invariant checked wherever its type occurs.
#[derive(Debug)]
pub struct Invariant {
    pub key: String,
    pub error: bool,
    pub human: String,
    pub expression: Expression,
    /// When it plainly holds without evaluating the expression.
    pub shortcut: Shortcut,
}

/// When one of the base invariants plainly holds, checked on the JSON
/// without evaluating its FHIRPath (~2,000 instructions an evaluation, for
/// foci that are nearly all the trivial case: a resource with nothing
/// contained, a period still open, an extension with a value). Otherwise
/// the expression decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shortcut {
    None,
    /// dom-2, dom-4, dom-5 (`contained.…empty()`): no `contained`.
    NoContained,
    /// per-1 (`start.hasValue().not() or end.hasValue().not() or …`): no
    /// `start` or no `end`.
    OpenPeriod,
    /// ext-1 (`extension.exists() != value.exists()`): extensions and no
    /// `value[x]` member, or one `value[x]` and no `extension` member.
    Extension,
    /// The local profiles' NHS number check ([`NHS_NUMBER_CHECK`]): a
    /// string of ten digits whose Modulus 11 check digit is right.
    NhsNumber,
    /// The local profiles' ODS code check ([`ODS_CODES`]): every
    /// identifier in the ODS system has a string value of 3 to 10
    /// upper-case letters or digits.
    OdsCodes,
    /// cpt-2 (`value.empty() or system.exists()`): a `system`, or no member
    /// FHIRPath could take for `value` (it matches `value` with any type's
    /// suffix, `valueString` too, and its `_value` sibling).
    ContactPointSystem,
    /// The local Encounter profile's [`FINISHED_HAS_START`]: a status other
    /// than `finished`, or a period start.
    FinishedHasStart,
}

/// A profile constraint's expression: the NHS number's Modulus 11 check.
pub const NHS_NUMBER_CHECK: &str = "$this.matches('^[0-9]{10}$') and ((11 - (($this.substring(0,1).toInteger() * 10 + $this.substring(1,1).toInteger() * 9 + $this.substring(2,1).toInteger() * 8 + $this.substring(3,1).toInteger() * 7 + $this.substring(4,1).toInteger() * 6 + $this.substring(5,1).toInteger() * 5 + $this.substring(6,1).toInteger() * 4 + $this.substring(7,1).toInteger() * 3 + $this.substring(8,1).toInteger() * 2) mod 11)) mod 11) = $this.substring(9,1).toInteger()";

/// A profile constraint's expression: ODS codes are 3 to 10 upper-case
/// letters or digits.
pub const ODS_CODES: &str = "identifier.where(system = 'https://fhir.nhs.uk/Id/ods-organization-code').all(value.matches('^[A-Z0-9]{3,10}$'))";

/// A profile constraint's expression: a finished Encounter has a start.
pub const FINISHED_HAS_START: &str = "status = 'finished' implies period.start.exists()";

impl Shortcut {
    /// For the invariant of base definition `key`.
    pub fn of(key: &str) -> Shortcut {
        match key {
            "dom-2" | "dom-4" | "dom-5" => Shortcut::NoContained,
            "per-1" => Shortcut::OpenPeriod,
            "ext-1" => Shortcut::Extension,
            "cpt-2" => Shortcut::ContactPointSystem,
            _ => Shortcut::None,
        }
    }

    /// For a profile's constraint: by its expression, word for word.
    pub fn of_expression(source: &str) -> Shortcut {
        match source {
            NHS_NUMBER_CHECK => Shortcut::NhsNumber,
            ODS_CODES => Shortcut::OdsCodes,
            FINISHED_HAS_START => Shortcut::FinishedHasStart,
            _ => Shortcut::None,
        }
    }

    /// `true` when the invariant certainly holds on `focus`; `false` when
    /// the expression must decide.
    pub fn holds(self, focus: &serde_json::Value) -> bool {
        if self == Shortcut::NhsNumber {
            return focus.as_str().is_some_and(crate::fhir::is_nhs_number);
        }
        let Some(o) = focus.as_object() else {
            return false;
        };
        match self {
            Shortcut::None | Shortcut::NhsNumber => false,
            Shortcut::OdsCodes => {
                let ods = |id: &serde_json::Value| {
                    id.member("system").and_then(serde_json::Value::as_str)
                        == Some("https://fhir.nhs.uk/Id/ods-organization-code")
                };
                let code = |id: &serde_json::Value| {
                    id.as_object().is_some_and(|o| {
                        o.keys()
                            .all(|k| k == "system" || k == "value" || k == "use")
                    }) && id
                        .member("value")
                        .and_then(serde_json::Value::as_str)
                        .is_some_and(|v| {
                            (3..=10).contains(&v.len())
                                && v.bytes()
                                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
                        })
                };
                match o.member("identifier") {
                    None => true,
                    Some(serde_json::Value::Array(ids)) => ids
                        .iter()
                        .all(|id| id.is_object() && (!ods(id) || code(id))),
                    Some(id @ serde_json::Value::Object(_)) => !ods(id) || code(id),
                    Some(_) => false,
                }
            }
            Shortcut::ContactPointSystem => {
                let system = o
                    .member("system")
                    .and_then(serde_json::Value::as_str)
                    .is_some_and(|s| !s.is_empty());
                system
                    || !o
                        .keys()
                        .any(|k| k.starts_with("value") || k.starts_with("_value"))
            }
            Shortcut::FinishedHasStart => {
                let other_status = o
                    .member("status")
                    .and_then(serde_json::Value::as_str)
                    .is_some_and(|s| s != "finished");
                let start = o
                    .member("period")
                    .and_then(|p| p.member("start"))
                    .and_then(serde_json::Value::as_str)
                    .is_some_and(|s| !s.is_empty());
                other_status || start
            }
            Shortcut::NoContained => o.member("contained").is_none(),
            Shortcut::OpenPeriod => o.member("start").is_none() || o.member("end").is_none(),
            Shortcut::Extension => {
                let mut values = o.iter().filter(|(k, _)| k.starts_with("value"));
                let value = values.next();
                let more = values.next().is_some() || o.keys().any(|k| k.starts_with("_value"));
                // A value FHIRPath navigates to and finds (a known type's
                // suffix, not null, an empty string or a list); extensions
                // that are objects.
                let plain = |(key, v): (&String, &serde_json::Value)| {
                    crate::fhirpath::is_choice_suffix(&key["value".len()..])
                        && !v.is_null()
                        && !v.is_array()
                        && v.as_str() != Some("")
                };
                match (o.member("extension"), value) {
                    (Some(serde_json::Value::Array(list)), None) => {
                        !list.is_empty() && list.iter().all(serde_json::Value::is_object) && !more
                    }
                    (None, Some(value)) => plain(value) && !more,
                    _ => false,
                }
            }
        }
    }
}

/// Why the definitions text did not load: a bug in `r4.defs`, found by tests.
#[derive(Debug, thiserror::Error)]
#[error("r4.defs line {line}: {message}")]
pub struct DefinitionError {
    pub line: usize,
    pub message: String,
}

impl Definitions {
    /// The compiled R4 base definitions.
    pub fn r4() -> Result<Definitions, DefinitionError> {
        Self::parse(R4_DEFS)
    }

    pub fn type_id(&self, name: &str) -> Option<TypeId> {
        self.by_name.get(name).copied()
    }

    pub fn get(&self, id: TypeId) -> &TypeDef {
        &self.types[usize::from(id)]
    }

    pub fn is_resource_name(&self, name: &str) -> bool {
        self.resource_names
            .binary_search_by(|n| n.as_str().cmp(name))
            .is_ok()
    }

    fn parse(text: &str) -> Result<Definitions, DefinitionError> {
        let mut builder = Builder::default();
        for prim in Primitive::ALL {
            builder.add_type(prim.name().to_string(), Kind::Primitive(prim));
        }
        let resource = builder.add_type("Resource".to_string(), Kind::AnyResource);

        // First pass: every type, so that elements can name types declared
        // further down.
        let mut blocks: Vec<Block<'_>> = Vec::new();
        let mut invariants = Vec::new();
        let mut resource_names = Vec::new();
        for (n, raw) in text.lines().enumerate() {
            let line_no = n + 1;
            let line = raw.trim_end();
            if line.trim().is_empty() || line.trim_start().starts_with('#') {
                continue;
            }
            if let Some(element) = line.strip_prefix("  ") {
                let Some(block) = blocks.last_mut() else {
                    return Err(err(line_no, "an element outside a type"));
                };
                block.3.push((line_no, element));
                continue;
            }
            let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
            match word {
                "resources" => resource_names = rest.split(' ').map(str::to_string).collect(),
                "resource" | "type" | "base" => blocks.push((line_no, word, rest, Vec::new())),
                "invariant" => invariants.push((line_no, rest)),
                other => return Err(err(line_no, format!("unknown line kind {other:?}"))),
            }
        }
        resource_names.sort();

        let mut bases: FastMap<&str, Vec<(usize, &str)>> = FastMap::default();
        for (_, word, name, elements) in &blocks {
            if *word == "base" {
                bases.insert(name, elements.clone());
            } else {
                let kind = if *word == "resource" {
                    Kind::Resource
                } else {
                    Kind::Complex
                };
                builder.add_type(name.to_string(), kind);
                // Backbone elements become types of their own, named by path.
                for (_, element) in elements {
                    let mut parts = element.split(' ');
                    let path = parts.next().unwrap_or_default();
                    if element.ends_with(" BackboneElement") {
                        builder.add_type(format!("{name}.{path}"), Kind::Complex);
                    }
                }
            }
        }

        for (line_no, word, name, elements) in &blocks {
            if *word == "base" {
                continue;
            }
            let inherited = if *word == "resource" {
                "DomainResource"
            } else {
                "Element"
            };
            let base = bases
                .get(inherited)
                .ok_or_else(|| err(*line_no, format!("no base {inherited}")))?;
            builder.add_elements(name, base)?;
            let backbone_base = bases
                .get("BackboneElement")
                .ok_or_else(|| err(*line_no, "no base BackboneElement"))?;
            for (element_line, element) in elements {
                if element.ends_with(" BackboneElement") {
                    let path = element.split(' ').next().unwrap_or_default();
                    builder.add_elements(&format!("{name}.{path}"), backbone_base)?;
                }
                builder.add_element(name, *element_line, element)?;
            }
        }

        for (line_no, rest) in invariants {
            builder.add_invariant(line_no, rest)?;
        }

        let mut types = builder.types;
        for ty in &mut types {
            if ty.elements.len() > MAX_ELEMENTS {
                return Err(err(
                    0,
                    format!("{} has over {MAX_ELEMENTS} elements", ty.name),
                ));
            }
            ty.members.sort_by(|a, b| by_length(&a.0, &b.0));
        }
        Ok(Definitions {
            types,
            by_name: builder.by_name,
            resource_names,
            resource,
        })
    }
}

impl TypeDef {
    /// The element a JSON member name (without a leading `_`) stands for, and
    /// which of its types the name picks.
    pub fn member(&self, name: &str) -> Option<(usize, usize)> {
        self.members
            .binary_search_by(|(n, _, _)| by_length(n, name))
            .ok()
            .map(|i| {
                let (_, element, ty) = &self.members[i];
                (usize::from(*element), usize::from(*ty))
            })
    }

    pub fn is_primitive(&self) -> Option<Primitive> {
        match self.kind {
            Kind::Primitive(p) => Some(p),
            _ => None,
        }
    }
}

/// Member names in order of length, then of bytes: a binary search then
/// compares the bytes of only the few names as long as the one sought
/// (its string comparisons were ~1% of the HL7 v2 feed's time, perf).
fn by_length(a: &str, b: &str) -> std::cmp::Ordering {
    (a.len(), a.as_bytes()).cmp(&(b.len(), b.as_bytes()))
}

/// A `resource`, `type` or `base` block of the text: its line, keyword, name
/// and element lines.
type Block<'t> = (usize, &'t str, &'t str, Vec<(usize, &'t str)>);

#[derive(Default)]
struct Builder {
    types: Vec<TypeDef>,
    by_name: FastMap<String, TypeId>,
}

impl Builder {
    fn add_type(&mut self, name: String, kind: Kind) -> TypeId {
        if let Some(id) = self.by_name.get(&name) {
            return *id;
        }
        let id = TypeId::try_from(self.types.len()).unwrap_or(TypeId::MAX);
        self.by_name.insert(name.clone(), id);
        self.types.push(TypeDef {
            name,
            kind,
            elements: Vec::new(),
            members: Vec::new(),
            invariants: Vec::new(),
        });
        id
    }

    fn add_elements(
        &mut self,
        owner: &str,
        elements: &[(usize, &str)],
    ) -> Result<(), DefinitionError> {
        for (line_no, element) in elements {
            self.add_element(owner, *line_no, element)?;
        }
        Ok(())
    }

    /// Adds `path min..max types [codes]` to `owner` (or to the backbone type
    /// the path's prefix names).
    fn add_element(
        &mut self,
        owner: &str,
        line_no: usize,
        text: &str,
    ) -> Result<(), DefinitionError> {
        let mut parts = text.splitn(4, ' ');
        let (Some(path), Some(card), Some(types)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(err(line_no, "expected: path min..max types"));
        };
        let codes = parts.next().map(|rest| {
            rest.trim_start_matches('{')
                .trim_end_matches('}')
                .split('|')
                .map(str::to_string)
                .collect::<Vec<_>>()
        });
        let (parent, name) = match path.rsplit_once('.') {
            Some((prefix, name)) => (format!("{owner}.{prefix}"), name),
            None => (owner.to_string(), path),
        };
        let (min, max) = card
            .split_once("..")
            .ok_or_else(|| err(line_no, "cardinality must be min..max"))?;
        let min: u32 = min.parse().map_err(|_| err(line_no, "bad minimum"))?;
        let many = match max {
            "1" => false,
            "*" => true,
            _ => return Err(err(line_no, "maximum must be 1 or *")),
        };
        let mut element_types = Vec::new();
        if types == "BackboneElement" {
            let ty = self.resolve(&format!("{owner}.{path}"), line_no)?;
            element_types.push(ElementType { ty, targets: None });
        } else {
            for choice in split_types(types) {
                let (ty_name, targets) = match choice.strip_prefix("Reference(") {
                    Some(rest) => (
                        "Reference",
                        Some(
                            rest.trim_end_matches(')')
                                .split('|')
                                .map(str::to_string)
                                .collect(),
                        ),
                    ),
                    None => (choice, None),
                };
                let ty = self.resolve(ty_name, line_no)?;
                element_types.push(ElementType { ty, targets });
            }
        }
        let choice = name.ends_with("[x]");
        let stem = name.trim_end_matches("[x]");
        let parent_id = self.resolve(&parent, line_no)?;
        let type_names: Vec<String> = element_types
            .iter()
            .map(|t| self.types[usize::from(t.ty)].name.clone())
            .collect();
        let ty = &mut self.types[usize::from(parent_id)];
        let index =
            u16::try_from(ty.elements.len()).map_err(|_| err(line_no, "too many elements"))?;
        if choice {
            for (i, type_name) in type_names.iter().enumerate() {
                let member = format!("{stem}{}{}", type_name[..1].to_uppercase(), &type_name[1..]);
                ty.members.push((member.into(), index, i as u16));
            }
        } else {
            ty.members.push((stem.into(), index, 0));
        }
        ty.elements.push(ElementDef {
            name: name.to_string(),
            min,
            many,
            types: element_types,
            codes,
            choice,
        });
        Ok(())
    }

    /// `Context key severity "human" expression`.
    fn add_invariant(&mut self, line_no: usize, text: &str) -> Result<(), DefinitionError> {
        let mut parts = text.splitn(4, ' ');
        let (Some(context), Some(key), Some(severity), Some(rest)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(err(
                line_no,
                "expected: context key severity \"human\" expression",
            ));
        };
        let rest = rest
            .strip_prefix('"')
            .ok_or_else(|| err(line_no, "the human text must be quoted"))?;
        let end = closing_quote(rest).ok_or_else(|| err(line_no, "unterminated human text"))?;
        let human = rest[..end].replace("\\\"", "\"");
        let source = rest[end + 1..].trim();
        let expression =
            Expression::parse(source).map_err(|e| err(line_no, format!("invariant {key}: {e}")))?;
        // DomainResource invariants apply to every resource type.
        let owners: Vec<TypeId> = if context == "DomainResource" {
            (0..self.types.len())
                .filter(|&i| self.types[i].kind == Kind::Resource)
                .map(|i| i as TypeId)
                .collect()
        } else {
            vec![self.resolve(context, line_no)?]
        };
        for owner in owners {
            self.types[usize::from(owner)].invariants.push(Invariant {
                key: key.to_string(),
                error: severity == "error",
                human: human.clone(),
                expression: expression.clone(),
                shortcut: Shortcut::of(key),
            });
        }
        Ok(())
    }

    fn resolve(&self, name: &str, line_no: usize) -> Result<TypeId, DefinitionError> {
        self.by_name
            .get(name)
            .copied()
            .ok_or_else(|| err(line_no, format!("unknown type {name}")))
    }
}

/// Splits `a|Reference(B|C)|d` at the `|`s outside parentheses.
fn split_types(types: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in types.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            '|' if depth == 0 => {
                out.push(&types[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&types[start..]);
    out
}

fn closing_quote(s: &str) -> Option<usize> {
    let bytes = s.as_bytes();
    (0..bytes.len()).find(|&i| bytes[i] == b'"' && (i == 0 || bytes[i - 1] != b'\\'))
}

fn err(line: usize, message: impl Into<String>) -> DefinitionError {
    DefinitionError {
        line,
        message: message.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Wherever a shortcut says an invariant holds, its FHIRPath says so
    /// too; and each shortcut leaves to the expression the cases it must
    /// (a closed period, a contained resource, an extension with both).
    #[test]
    fn a_shortcut_holds_only_where_the_expression_does() {
        use crate::fhirpath::Env;
        use serde_json::json;
        let defs = Definitions::r4().unwrap();
        let cases: &[(&str, serde_json::Value, bool)] = &[
            (
                "Period",
                json!({"start": "2026-07-14T10:15:00+01:00"}),
                true,
            ),
            ("Period", json!({"end": "2026-07-14"}), true),
            ("Period", json!({}), true),
            (
                "Period",
                json!({"start": "2026-07-14", "end": "2026-07-15"}),
                false,
            ),
            (
                "Period",
                json!({"start": "2026-07-15", "end": "2026-07-14"}),
                false,
            ),
            ("Extension", json!({"url": "u", "valueString": "x"}), true),
            (
                "Extension",
                json!({"url": "u", "extension": [{"url": "a", "valueCode": "b"}]}),
                true,
            ),
            (
                "Extension",
                json!({"url": "u", "valueString": "x", "extension": [{"url": "a"}]}),
                false,
            ),
            ("Extension", json!({"url": "u"}), false),
            ("Extension", json!({"url": "u", "extension": []}), false),
            (
                "Extension",
                json!({"url": "u", "_valueString": {"id": "x"}}),
                false,
            ),
            (
                "Extension",
                json!({"url": "u", "valueString": "x", "_valueString": {"id": "x"}}),
                false,
            ),
            ("Extension", json!({"url": "u", "valueFoo": "x"}), false),
            ("Extension", json!({"url": "u", "valueString": []}), false),
            ("Extension", json!({"url": "u", "valueString": null}), false),
            ("Extension", json!({"url": "u", "valueString": ""}), false),
            ("Extension", json!({"url": "u", "extension": [null]}), false),
            (
                "Extension",
                json!({"url": "u", "valueCodeableConcept": {"text": "x"}}),
                true,
            ),
            ("Patient", json!({"resourceType": "Patient"}), true),
            (
                "ContactPoint",
                json!({"system": "phone", "value": "01689"}),
                true,
            ),
            ("ContactPoint", json!({"use": "home"}), true),
            ("ContactPoint", json!({"value": "01689"}), false),
            ("ContactPoint", json!({"_value": {"id": "a"}}), false),
            (
                "ContactPoint",
                json!({"value": "01689", "system": ""}),
                false,
            ),
            ("ContactPoint", json!({"value": null}), false),
            ("ContactPoint", json!({"valueString": "01689"}), false),
            ("ContactPoint", json!({"_valueString": {"id": "a"}}), false),
            (
                "Patient",
                json!({"resourceType": "Patient", "contained": [{"resourceType": "Organization", "contained": [{"resourceType": "Patient"}]}]}),
                false,
            ),
        ];
        for (ty, focus, expected) in cases {
            let def = defs.get(defs.type_id(ty).unwrap());
            let shortcuts: Vec<&Invariant> = def
                .invariants
                .iter()
                .filter(|i| i.shortcut != Shortcut::None)
                .collect();
            assert!(!shortcuts.is_empty(), "{ty}");
            for invariant in shortcuts {
                let holds = invariant.shortcut.holds(focus);
                assert_eq!(holds, *expected, "{} on {focus}", invariant.key);
                let env = Env {
                    focus,
                    focus_type: Some(def.name.as_str()),
                    resource: focus,
                    root: focus,
                    vars: &[],
                    unbound: None,
                };
                let satisfied = invariant.expression.is_satisfied(&env);
                if holds {
                    assert_eq!(satisfied.ok(), Some(true), "{} on {focus}", invariant.key);
                }
            }
        }
        // The closed, reversed period is the expression's to refuse.
        let period = defs.get(defs.type_id("Period").unwrap());
        let reversed = json!({"start": "2026-07-15", "end": "2026-07-14"});
        let env = Env {
            focus: &reversed,
            focus_type: Some("Period"),
            resource: &reversed,
            root: &reversed,
            vars: &[],
            unbound: None,
        };
        let per_1 = period.invariants.iter().find(|i| i.key == "per-1").unwrap();
        assert_eq!(per_1.expression.is_satisfied(&env).ok(), Some(false));
    }

    /// The local profiles' NHS number and ODS code constraints are the
    /// expressions the natives stand for (word for word, or they would not
    /// be used), and where a native says "holds", the expression agrees;
    /// where it says not, the expression decides.
    #[test]
    fn the_profile_constraints_checked_natively_agree_with_their_expressions() {
        use crate::fhirpath::{Env, Expression};
        use serde_json::json;
        let embedded: String = crate::validate::profile::EMBEDDED
            .iter()
            .map(|(_, text)| *text)
            .collect();
        for expression in [NHS_NUMBER_CHECK, ODS_CODES, FINISHED_HAS_START] {
            let quoted = serde_json::to_string(expression).unwrap();
            assert!(embedded.contains(&quoted), "{expression} in no profile");
        }
        let cases: &[(&str, serde_json::Value, bool)] = &[
            (NHS_NUMBER_CHECK, json!("9434765919"), true),
            (NHS_NUMBER_CHECK, json!("9990000018"), true),
            (NHS_NUMBER_CHECK, json!("9434765918"), false),
            (NHS_NUMBER_CHECK, json!("943476591"), false),
            (NHS_NUMBER_CHECK, json!("94347659190"), false),
            (NHS_NUMBER_CHECK, json!("943476591X"), false),
            // 10 digits whose check would be 10: never valid.
            (NHS_NUMBER_CHECK, json!("1000000010"), false),
            (NHS_NUMBER_CHECK, json!("0000000000"), true),
            (NHS_NUMBER_CHECK, json!(9434765919u64), false),
            (
                ODS_CODES,
                json!({"identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "G84001"}}),
                true,
            ),
            (
                ODS_CODES,
                json!({"identifier": [{"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "RJZ"}, {"system": "other", "value": "x y"}]}),
                true,
            ),
            (ODS_CODES, json!({"display": "a practice"}), true),
            (
                ODS_CODES,
                json!({"identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "g84001"}}),
                false,
            ),
            (
                ODS_CODES,
                json!({"identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "G8"}}),
                false,
            ),
            (
                ODS_CODES,
                json!({"identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code"}}),
                false,
            ),
            (
                ODS_CODES,
                json!({"identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "G84001", "_value": {"id": "a"}}}),
                false,
            ),
        ];
        let finished = |focus: serde_json::Value, holds| (FINISHED_HAS_START, focus, holds);
        let cases = [
            cases,
            &[
                finished(json!({"status": "in-progress"}), true),
                finished(
                    json!({"status": "finished", "period": {"start": "2026"}}),
                    true,
                ),
                finished(
                    json!({"status": "arrived", "period": {"end": "2026"}}),
                    true,
                ),
                finished(json!({"period": {"start": "2026-11-03"}}), true),
                finished(json!({"status": "finished"}), false),
                finished(
                    json!({"status": "finished", "period": {"end": "2026"}}),
                    false,
                ),
                finished(
                    json!({"status": "finished", "period": {"start": ""}}),
                    false,
                ),
                finished(json!({"status": 3}), false),
                finished(json!({}), false),
                finished(
                    json!({"status": "finished", "period": {"_start": {"id": "a"}}}),
                    false,
                ),
            ][..],
        ]
        .concat();
        for (source, focus, expected) in &cases {
            let shortcut = Shortcut::of_expression(source);
            assert_ne!(shortcut, Shortcut::None);
            let holds = shortcut.holds(focus);
            assert_eq!(holds, *expected, "{shortcut:?} on {focus}");
            let expression = Expression::parse(source).unwrap();
            let env = Env {
                focus,
                focus_type: None,
                resource: focus,
                root: focus,
                vars: &[],
                unbound: None,
            };
            let satisfied = expression.is_satisfied(&env).ok();
            if holds {
                assert_eq!(satisfied, Some(true), "{shortcut:?} on {focus}");
            }
            // The NHS number check decides both ways on a string.
            if *source == NHS_NUMBER_CHECK && focus.is_string() {
                assert_eq!(satisfied, Some(holds), "{focus}");
            }
        }
    }

    #[test]
    fn loads_the_r4_definitions() {
        let defs = Definitions::r4().unwrap();
        let patient = defs.get(defs.type_id("Patient").unwrap());
        let (el, ty) = patient.member("deceasedDateTime").unwrap();
        assert_eq!(patient.elements[el].name, "deceased[x]");
        assert_eq!(defs.get(patient.elements[el].types[ty].ty).name, "dateTime");
        let (gender, _) = patient.member("gender").unwrap();
        assert_eq!(
            patient.elements[gender].codes.as_deref().unwrap(),
            ["male", "female", "other", "unknown"]
        );
        assert!(patient.member("deceased").is_none());
        assert!(patient.member("contained").is_some());
        let contact = defs.get(defs.type_id("Patient.contact").unwrap());
        assert!(contact.member("modifierExtension").is_some());
        assert_eq!(contact.invariants[0].key, "pat-1");
        let encounter = defs.get(defs.type_id("Encounter").unwrap());
        let (status, _) = encounter.member("status").unwrap();
        assert_eq!(encounter.elements[status].min, 1);
        assert!(encounter.invariants.iter().any(|i| i.key == "dom-2"));
        let extension = defs.get(defs.type_id("Extension").unwrap());
        assert!(extension.member("valueCodeableConcept").is_some());
        assert!(defs.is_resource_name("Organization"));
        assert!(!defs.is_resource_name("Organisation"));
    }
}
