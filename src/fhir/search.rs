//! Search parameters: which ones each type supports, what a resource puts in
//! the index for them, and how a search URL is read into a [`SearchQuery`].
//!
//! One table ([`params_for`]) drives all three and the CapabilityStatement, so
//! what the server says it supports is what it does.

use super::ResourceType;
use super::datetime::{self, Range};
use super::outcome::Issue;
use super::value::Members;
use serde_json::Value;

/// Default page size when a search gives no `_count`.
pub const DEFAULT_COUNT: usize = 20;
/// Largest page a client may ask for: bounds the work and memory of one page.
pub const MAX_COUNT: usize = 1000;
/// Most comma-separated values of one parameter: bounds the SQL of a search.
pub const MAX_ALTERNATIVES: usize = 100;
/// Most search criteria in one query: each is a sub-select of the SQL.
pub const MAX_CRITERIA: usize = 50;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamKind {
    Token,
    Reference,
    Date,
    String,
}

impl ParamKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ParamKind::Token => "token",
            ParamKind::Reference => "reference",
            ParamKind::Date => "date",
            ParamKind::String => "string",
        }
    }
}

/// Where a parameter's values come from in the resource.
#[derive(Debug, Clone, Copy)]
enum Source {
    /// `identifier[*]` (system, value).
    Identifier,
    /// A top-level `code` element such as `status`.
    Code(&'static str),
    /// A top-level `Reference` element, optionally only when it targets a type.
    Reference(&'static str, Option<ResourceType>),
    /// A top-level `Period` element.
    Period(&'static str),
    /// The codings of a top-level CodeableConcept, list of them, or Coding.
    Coding(&'static str),
    /// `address[*].postalCode`, kept normalised (see [`normalise_string`]).
    Postcode,
}

/// A search parameter the gateway supports.
#[derive(Debug, Clone, Copy)]
pub struct SearchParam {
    pub name: &'static str,
    pub kind: ParamKind,
    /// Canonical URL of the R4 SearchParameter it implements.
    pub definition: &'static str,
    pub documentation: &'static str,
    source: Source,
}

const IDENTIFIER_PATIENT: SearchParam = SearchParam {
    name: "identifier",
    kind: ParamKind::Token,
    definition: "http://hl7.org/fhir/SearchParameter/Patient-identifier",
    documentation: "A patient identifier: system|value, value, |value or system|",
    source: Source::Identifier,
};
const IDENTIFIER_CLINICAL: SearchParam = SearchParam {
    name: "identifier",
    kind: ParamKind::Token,
    definition: "http://hl7.org/fhir/SearchParameter/clinical-identifier",
    documentation: "A business identifier: system|value, value, |value or system|",
    source: Source::Identifier,
};
const fn status(definition: &'static str) -> SearchParam {
    SearchParam {
        name: "status",
        kind: ParamKind::Token,
        definition,
        documentation: "The status code; several separated by commas match any",
        source: Source::Code("status"),
    }
}
const fn subject(definition: &'static str) -> SearchParam {
    SearchParam {
        name: "subject",
        kind: ParamKind::Reference,
        definition,
        documentation: "The subject: Type/id, or a bare id",
        source: Source::Reference("subject", None),
    }
}
const PATIENT: SearchParam = SearchParam {
    name: "patient",
    kind: ParamKind::Reference,
    definition: "http://hl7.org/fhir/SearchParameter/clinical-patient",
    documentation: "The subject, when it is a Patient: Patient/id or id",
    source: Source::Reference("subject", Some(ResourceType::Patient)),
};
const POSTCODE: SearchParam = SearchParam {
    name: "address-postalcode",
    kind: ParamKind::String,
    definition: "http://hl7.org/fhir/SearchParameter/individual-address-postalcode",
    documentation: "A postcode of any address; starts-with, ignoring case and spaces",
    source: Source::Postcode,
};
const fn coding(
    name: &'static str,
    element: &'static str,
    definition: &'static str,
) -> SearchParam {
    SearchParam {
        name,
        kind: ParamKind::Token,
        definition,
        documentation: "A code: system|code, code, |code or system|",
        source: Source::Coding(element),
    }
}
const ENCOUNTER_DATE: SearchParam = SearchParam {
    name: "date",
    kind: ParamKind::Date,
    definition: "http://hl7.org/fhir/SearchParameter/clinical-date",
    documentation: "A date within Encounter.period; prefixes eq, ne, gt, lt, ge, le, sa, eb",
    source: Source::Period("period"),
};

/// The search parameters of `ty` (besides `_id`, `_count`, which all have).
pub fn params_for(ty: ResourceType) -> &'static [SearchParam] {
    const PATIENT_PARAMS: &[SearchParam] = &[IDENTIFIER_PATIENT, POSTCODE];
    const ENCOUNTER_PARAMS: &[SearchParam] = &[
        IDENTIFIER_CLINICAL,
        status("http://hl7.org/fhir/SearchParameter/Encounter-status"),
        subject("http://hl7.org/fhir/SearchParameter/Encounter-subject"),
        PATIENT,
        ENCOUNTER_DATE,
        coding(
            "class",
            "class",
            "http://hl7.org/fhir/SearchParameter/Encounter-class",
        ),
    ];
    const CAREPLAN_PARAMS: &[SearchParam] = &[
        IDENTIFIER_CLINICAL,
        status("http://hl7.org/fhir/SearchParameter/CarePlan-status"),
        subject("http://hl7.org/fhir/SearchParameter/CarePlan-subject"),
        PATIENT,
        coding(
            "category",
            "category",
            "http://hl7.org/fhir/SearchParameter/CarePlan-category",
        ),
    ];
    const SERVICEREQUEST_PARAMS: &[SearchParam] = &[
        IDENTIFIER_CLINICAL,
        status("http://hl7.org/fhir/SearchParameter/ServiceRequest-status"),
        subject("http://hl7.org/fhir/SearchParameter/ServiceRequest-subject"),
        PATIENT,
        coding(
            "code",
            "code",
            "http://hl7.org/fhir/SearchParameter/clinical-code",
        ),
    ];
    match ty {
        ResourceType::Patient => PATIENT_PARAMS,
        ResourceType::Encounter => ENCOUNTER_PARAMS,
        ResourceType::CarePlan => CAREPLAN_PARAMS,
        ResourceType::ServiceRequest => SERVICEREQUEST_PARAMS,
    }
}

// ---------------------------------------------------------------------------
// What a resource puts in the index.

/// A token value in the index; `system` is empty when the value has none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenEntry {
    pub param: &'static str,
    pub system: String,
    pub value: String,
}

/// A reference as written in the resource, resolved only at write time (it
/// may be a `urn:uuid:` that a transaction resolves).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReferenceEntry {
    pub param: &'static str,
    pub reference: String,
    pub target: Option<ResourceType>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DateEntry {
    pub param: &'static str,
    pub range: Range,
}

/// Everything a resource contributes to the search index.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IndexEntries {
    pub tokens: Vec<TokenEntry>,
    pub references: Vec<ReferenceEntry>,
    pub dates: Vec<DateEntry>,
}

/// The top-level elements of `ty` that search parameters read.
pub fn indexed_elements(ty: ResourceType) -> impl Iterator<Item = &'static str> {
    params_for(ty).iter().map(|p| match p.source {
        Source::Identifier => "identifier",
        Source::Code(element)
        | Source::Reference(element, _)
        | Source::Period(element)
        | Source::Coding(element) => element,
        Source::Postcode => "address",
    })
}

/// Reads the index entries of `resource`, a resource of type `ty`.
pub fn extract_index(ty: ResourceType, resource: &Value) -> IndexEntries {
    let mut entries = IndexEntries::default();
    for param in params_for(ty) {
        match param.source {
            Source::Identifier => {
                for identifier in resource.at("identifier").as_array().into_iter().flatten() {
                    if let Some(value) = identifier.at("value").as_str() {
                        entries.tokens.push(TokenEntry {
                            param: param.name,
                            system: identifier.at("system").as_str().unwrap_or("").to_string(),
                            value: value.to_string(),
                        });
                    }
                }
            }
            Source::Code(element) => {
                if let Some(code) = resource.at(element).as_str() {
                    entries.tokens.push(TokenEntry {
                        param: param.name,
                        system: String::new(),
                        value: code.to_string(),
                    });
                }
            }
            Source::Reference(element, target) => {
                if let Some(reference) = resource.at(element).at("reference").as_str() {
                    entries.references.push(ReferenceEntry {
                        param: param.name,
                        reference: reference.to_string(),
                        target,
                    });
                }
            }
            Source::Coding(element) => {
                let value = resource.at(element);
                let concepts: Vec<&Value> = match value {
                    Value::Array(items) => items.iter().collect(),
                    other => vec![other],
                };
                for concept in concepts {
                    let codings: Vec<&Value> = match concept.at("coding").as_array() {
                        Some(codings) => codings.iter().collect(),
                        // A Coding itself (Encounter.class).
                        None => vec![concept],
                    };
                    for coding in codings {
                        if let Some(code) = coding.at("code").as_str() {
                            let token = TokenEntry {
                                param: param.name,
                                system: coding.at("system").as_str().unwrap_or("").to_string(),
                                value: code.to_string(),
                            };
                            if !entries.tokens.contains(&token) {
                                entries.tokens.push(token);
                            }
                        }
                    }
                }
            }
            Source::Postcode => {
                for address in resource.at("address").as_array().into_iter().flatten() {
                    if let Some(postcode) = address.at("postalCode").as_str() {
                        let token = TokenEntry {
                            param: param.name,
                            system: String::new(),
                            value: normalise_string(postcode),
                        };
                        if !token.value.is_empty() && !entries.tokens.contains(&token) {
                            entries.tokens.push(token);
                        }
                    }
                }
            }
            Source::Period(element) => {
                let period = resource.at(element);
                let start = period.at("start").as_str().and_then(datetime::parse_range);
                let end = period.at("end").as_str().and_then(datetime::parse_range);
                if start.is_some() || end.is_some() {
                    entries.dates.push(DateEntry {
                        param: param.name,
                        range: Range {
                            start: start.map_or(i64::MIN, |r| r.start),
                            end: end.map_or(i64::MAX, |r| r.end),
                        },
                    });
                }
            }
        }
    }
    entries
}

/// The `(type, id)` a relative reference points at: `Patient/1`,
/// `Patient/1/_history/2`. `None` for contained (`#x`) and `urn:` references,
/// and for absolute URLs: those may name another server's `Patient/1`, so
/// they are never taken for one of ours.
pub fn reference_target(reference: &str) -> Option<(&str, &str)> {
    if reference.contains("://") {
        return None;
    }
    let path = reference.split(['?', '#']).next().unwrap_or("");
    let mut parts: Vec<&str> = path.split('/').collect();
    if parts.len() >= 4 && parts[parts.len() - 2] == "_history" {
        parts.truncate(parts.len() - 2);
    }
    let [.., ty, id] = parts.as_slice() else {
        return None;
    };
    let ty_ok = ty.starts_with(|c: char| c.is_ascii_uppercase())
        && ty.bytes().all(|b| b.is_ascii_alphabetic());
    (ty_ok && super::is_valid_id(id)).then_some((*ty, *id))
}

// ---------------------------------------------------------------------------
// Reading a search URL.

/// How a token search value matches `system|value`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenMatch {
    /// `value`: any system.
    Value(String),
    /// `system|value`.
    SystemValue(String, String),
    /// `|value`: no system.
    NoSystem(String),
    /// `system|`: any value in the system.
    System(String),
    /// A string parameter: values (normalised) starting with this.
    Prefix(String),
}

/// How string parameters are indexed and searched: upper case, without
/// white space (`br1 3pt` finds `BR1 3PT`).
pub fn normalise_string(text: &str) -> String {
    text.chars()
        .filter(|c| !c.is_whitespace())
        .flat_map(char::to_uppercase)
        .collect()
}

/// A date prefix (FHIR R4 §3.1.1.4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatePrefix {
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
    Sa,
    Eb,
}

impl DatePrefix {
    fn split(value: &str) -> (DatePrefix, &str) {
        const PREFIXES: [(&str, DatePrefix); 8] = [
            ("eq", DatePrefix::Eq),
            ("ne", DatePrefix::Ne),
            ("gt", DatePrefix::Gt),
            ("lt", DatePrefix::Lt),
            ("ge", DatePrefix::Ge),
            ("le", DatePrefix::Le),
            ("sa", DatePrefix::Sa),
            ("eb", DatePrefix::Eb),
        ];
        for (text, prefix) in PREFIXES {
            if let Some(rest) = value.strip_prefix(text) {
                return (prefix, rest);
            }
        }
        (DatePrefix::Eq, value)
    }

    /// Does an indexed range `target` match the search range `search`?
    pub fn matches(self, target: Range, search: Range) -> bool {
        let contains = target.start >= search.start && target.end <= search.end;
        match self {
            DatePrefix::Eq => contains,
            DatePrefix::Ne => !contains,
            DatePrefix::Gt => target.end > search.end,
            DatePrefix::Lt => target.start < search.start,
            DatePrefix::Ge => target.end > search.end || contains,
            DatePrefix::Le => target.start < search.start || contains,
            DatePrefix::Sa => target.start >= search.end,
            DatePrefix::Eb => target.end <= search.start,
        }
    }
}

/// One condition of a search; the conditions of a query must all hold, the
/// alternatives inside one (comma-separated values) any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Clause {
    Id(Vec<String>),
    Token {
        param: &'static str,
        any_of: Vec<TokenMatch>,
    },
    Reference {
        param: &'static str,
        /// `(type, id)`; the type is `None` for a bare id.
        any_of: Vec<(Option<String>, String)>,
    },
    Date {
        param: &'static str,
        any_of: Vec<(DatePrefix, Range)>,
    },
}

/// A search, read and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchQuery {
    pub resource_type: ResourceType,
    pub clauses: Vec<Clause>,
    pub count: usize,
    /// Keyset paging: only ids after this one.
    pub after: Option<String>,
    /// The query's own parameters, for the `self` and `next` links.
    pub canonical: Vec<(String, String)>,
}

/// The query parameter that carries the paging position in `next` links.
pub const CURSOR_PARAM: &str = "_cursor";

/// Reads `pairs` (decoded query parameters) as a search on `ty`.
///
/// Unknown parameters are refused (`strict`), or skipped with an issue
/// returned for the Bundle's outcome (`Prefer: handling=lenient`).
pub fn parse_search(
    ty: ResourceType,
    pairs: &[(String, String)],
    strict: bool,
) -> Result<(SearchQuery, Vec<Issue>), Issue> {
    let mut query = SearchQuery {
        resource_type: ty,
        clauses: Vec::new(),
        count: DEFAULT_COUNT,
        after: None,
        canonical: Vec::new(),
    };
    let mut skipped = Vec::new();
    for (name, value) in pairs {
        let located = |msg: String| Issue::error("value", msg).at(format!("{ty}?{name}"));
        match name.as_str() {
            "_count" => {
                let asked = value.parse::<usize>().map_err(|_| {
                    located(format!(
                        "_count must be a whole number from 0 to {MAX_COUNT}, not \"{value}\""
                    ))
                })?;
                // A server may return fewer than asked (R4 3.1.1.5.8): pages
                // stop at MAX_COUNT, and the `next` link carries on.
                if asked > MAX_COUNT {
                    skipped.push(Issue {
                        severity: super::outcome::Severity::Warning,
                        ..Issue::error(
                            "too-costly",
                            format!("_count {asked} is over this server's most, {MAX_COUNT}: pages hold {MAX_COUNT}"),
                        )
                        .at(format!("{ty}?{name}"))
                    });
                }
                query.count = asked.min(MAX_COUNT);
                continue;
            }
            CURSOR_PARAM => {
                if !super::is_valid_id(value) {
                    return Err(located(format!("{CURSOR_PARAM} is not a valid position")));
                }
                query.after = Some(value.clone());
                continue;
            }
            "_format" if value.contains("json") => continue,
            "_id" => {
                let ids = split_unescaped(value, ',');
                if ids.len() > MAX_ALTERNATIVES {
                    return Err(located(format!(
                        "at most {MAX_ALTERNATIVES} values may be given for one parameter"
                    )));
                }
                query.clauses.push(Clause::Id(ids));
            }
            _ => {
                let (base, modifier) = match name.split_once(':') {
                    Some((base, modifier)) => (base, Some(modifier)),
                    None => (name.as_str(), None),
                };
                let Some(param) = params_for(ty).iter().find(|p| p.name == base) else {
                    let issue = Issue::error(
                        "not-supported",
                        format!("{ty} has no search parameter \"{name}\" on this server; see /fhir/metadata"),
                    )
                    .at(format!("{ty}?{name}"));
                    if strict {
                        return Err(issue);
                    }
                    skipped.push(Issue {
                        severity: super::outcome::Severity::Warning,
                        ..issue
                    });
                    continue;
                };
                if let Some(modifier) = modifier {
                    return Err(Issue::error(
                        "not-supported",
                        format!("the search modifier \":{modifier}\" is not supported"),
                    )
                    .at(format!("{ty}?{name}")));
                }
                query
                    .clauses
                    .push(parse_clause(param, value).map_err(located)?);
            }
        }
        query.canonical.push((name.clone(), value.clone()));
    }
    if query.clauses.len() > MAX_CRITERIA {
        return Err(Issue::error(
            "too-costly",
            format!(
                "a search may have at most {MAX_CRITERIA} criteria; this one has {}",
                query.clauses.len()
            ),
        )
        .at(ty.as_str()));
    }
    Ok((query, skipped))
}

fn parse_clause(param: &SearchParam, value: &str) -> Result<Clause, String> {
    let alternatives = split_raw(value, ',');
    if alternatives.len() > MAX_ALTERNATIVES {
        return Err(format!(
            "at most {MAX_ALTERNATIVES} values may be given for one parameter"
        ));
    }
    if alternatives.iter().any(|a| a.is_empty()) {
        return Err(format!(
            "empty value for search parameter \"{}\"",
            param.name
        ));
    }
    match param.kind {
        ParamKind::Token => Ok(Clause::Token {
            param: param.name,
            any_of: alternatives.iter().map(|a| token_match(a)).collect(),
        }),
        ParamKind::String => {
            let mut any_of = Vec::new();
            for alternative in &alternatives {
                let value = normalise_string(&unescape(alternative));
                if value.is_empty() {
                    return Err(format!(
                        "empty value for search parameter \"{}\" (spaces only)",
                        param.name
                    ));
                }
                any_of.push(TokenMatch::Prefix(value));
            }
            Ok(Clause::Token {
                param: param.name,
                any_of,
            })
        }
        ParamKind::Reference => {
            let mut any_of = Vec::new();
            for alternative in alternatives.iter().map(|a| unescape(a)) {
                let alternative = &alternative;
                let target = if super::is_valid_id(alternative) {
                    (None, alternative.clone())
                } else if let Some((ty, id)) = reference_target(alternative) {
                    (Some(ty.to_string()), id.to_string())
                } else {
                    return Err(format!(
                        "\"{alternative}\" is not a local reference (Type/id or id)"
                    ));
                };
                let target = match (param.source, target) {
                    (Source::Reference(_, Some(only)), (None, id)) => {
                        (Some(only.as_str().to_string()), id)
                    }
                    (_, target) => target,
                };
                any_of.push(target);
            }
            Ok(Clause::Reference {
                param: param.name,
                any_of,
            })
        }
        ParamKind::Date => {
            let mut any_of = Vec::new();
            for alternative in &alternatives {
                // An unencoded '+' in a query string arrives as a space.
                let alternative = alternative.replace(' ', "+");
                let (prefix, date) = DatePrefix::split(&alternative);
                let range = datetime::parse_range(date).ok_or_else(|| {
                    format!(
                        "\"{date}\" is not a FHIR date (YYYY, YYYY-MM, YYYY-MM-DD or YYYY-MM-DDThh:mm[:ss][Z|±hh:mm]; encode '+' as %2B)"
                    )
                })?;
                any_of.push((prefix, range));
            }
            Ok(Clause::Date {
                param: param.name,
                any_of,
            })
        }
    }
}

fn token_match(text: &str) -> TokenMatch {
    let parts = split_unescaped(text, '|');
    match parts.as_slice() {
        [value] => TokenMatch::Value(value.clone()),
        [system, value] if system.is_empty() => TokenMatch::NoSystem(value.clone()),
        [system, value] if value.is_empty() => TokenMatch::System(system.clone()),
        [system, value] => TokenMatch::SystemValue(system.clone(), value.clone()),
        // More than one unescaped '|': the rest belongs to the value.
        [system, rest @ ..] => TokenMatch::SystemValue(system.clone(), rest.join("|")),
        [] => TokenMatch::Value(String::new()),
    }
}

/// A search for resources of `ty` with any of these identifiers `(system,
/// value)`, escaped as FHIR R4 §3.1.1.5.7 requires: what [`parse_search`]
/// reads from `identifier=system|value,...`, built without writing that text
/// and reading it back (except as the query's canonical form, by which the
/// store's writer knows conditions apart). `keys` holds 1 to
/// [`MAX_ALTERNATIVES`] identifiers, as that search would.
pub fn identifier_query(ty: ResourceType, keys: &[(String, String)]) -> SearchQuery {
    debug_assert!(!keys.is_empty() && keys.len() <= MAX_ALTERNATIVES);
    let mut text = String::new();
    let mut any_of = Vec::with_capacity(keys.len());
    for (system, value) in keys {
        if !text.is_empty() {
            text.push(',');
        }
        text.push_str(&escape(system));
        text.push('|');
        text.push_str(&escape(value));
        // As `token_match` reads `system|value`.
        any_of.push(if system.is_empty() {
            TokenMatch::NoSystem(value.clone())
        } else if value.is_empty() {
            TokenMatch::System(system.clone())
        } else {
            TokenMatch::SystemValue(system.clone(), value.clone())
        });
    }
    SearchQuery {
        resource_type: ty,
        clauses: vec![Clause::Token {
            param: "identifier",
            any_of,
        }],
        count: DEFAULT_COUNT,
        after: None,
        canonical: vec![("identifier".to_string(), text)],
    }
}

/// `,`, `|`, `$` and `\` escaped with `\` in a search value.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if matches!(c, ',' | '|' | '$' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Splits on `sep` where it is not escaped with `\\` (FHIR R4 §3.1.1.5.7).
/// Escapes are kept: [`unescape`] resolves them once the value is split fully.
fn split_raw(text: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut escaped = false;
    for (at, c) in text.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == sep {
            parts.push(&text[start..at]);
            start = at + c.len_utf8();
        }
    }
    parts.push(&text[start..]);
    parts
}

/// Resolves `\\,`, `\\|`, `\\$` and `\\\\`; any other backslash stays as it is.
fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\'
            && let Some(&next) = chars.peek()
            && matches!(next, '\\' | ',' | '|' | '$')
        {
            out.push(next);
            chars.next();
            continue;
        }
        out.push(c);
    }
    out
}

/// Splits on unescaped `sep` and resolves the escapes of each part.
fn split_unescaped(text: &str, sep: char) -> Vec<String> {
    split_raw(text, sep).into_iter().map(unescape).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn identifier_queries_are_what_parse_search_reads() {
        // Systems and values with every character the search syntax
        // escapes, empty ones, and lists of several.
        let parts = [
            "",
            "s",
            "urn:x",
            "a,b",
            "a|b",
            "a$b",
            "a\\b",
            "\\",
            "|",
            ",|$\\x",
            "9434765919",
        ];
        let mut cases: Vec<Vec<(String, String)>> = Vec::new();
        for system in parts {
            for value in parts {
                cases.push(vec![(system.to_string(), value.to_string())]);
            }
        }
        for (i, a) in parts.iter().enumerate() {
            let b = parts[(i * 7 + 3) % parts.len()];
            cases.push(vec![
                (a.to_string(), b.to_string()),
                (b.to_string(), a.to_string()),
                ("urn:y".to_string(), a.to_string()),
            ]);
        }
        for ty in [ResourceType::Patient, ResourceType::Encounter] {
            for keys in &cases {
                let text = keys
                    .iter()
                    .map(|(system, value)| format!("{}|{}", escape(system), escape(value)))
                    .collect::<Vec<_>>()
                    .join(",");
                let (parsed, issues) =
                    parse_search(ty, &[("identifier".to_string(), text)], true).unwrap();
                assert!(issues.is_empty());
                assert_eq!(identifier_query(ty, keys), parsed, "{keys:?}");
            }
        }
    }

    #[test]
    fn extracts_identifiers_status_subject_and_period() {
        let encounter = json!({
            "resourceType": "Encounter",
            "identifier": [{"system": "urn:x", "value": "V1"}, {"value": "bare"}, {"system": "s"}],
            "status": "finished",
            "subject": {"reference": "Patient/p1"},
            "period": {"start": "2020-01-01T10:00:00Z"}
        });
        let index = extract_index(ResourceType::Encounter, &encounter);
        assert_eq!(index.tokens.len(), 3);
        assert_eq!(index.tokens[1].system, "");
        assert_eq!(index.tokens[2].value, "finished");
        let params: Vec<_> = index.references.iter().map(|r| r.param).collect();
        assert_eq!(params, ["subject", "patient"]);
        assert_eq!(index.dates[0].range.end, i64::MAX);
    }

    #[test]
    fn reads_reference_targets() {
        assert_eq!(reference_target("Patient/1"), Some(("Patient", "1")));
        assert_eq!(
            reference_target("Patient/1/_history/3"),
            Some(("Patient", "1"))
        );
        assert_eq!(
            reference_target("https://other.example/fhir/Patient/1"),
            None
        );
        assert_eq!(reference_target("urn:uuid:0f1e"), None);
        assert_eq!(reference_target("#contained"), None);
        assert_eq!(reference_target("1"), None);
    }

    #[test]
    fn reads_token_forms_with_escapes() {
        let (q, _) = parse_search(
            ResourceType::Patient,
            &pairs(&[("identifier", "a|b,|c,d,e|,x\\|y|z\\,w")]),
            true,
        )
        .unwrap();
        assert_eq!(
            q.clauses,
            [Clause::Token {
                param: "identifier",
                any_of: vec![
                    TokenMatch::SystemValue("a".into(), "b".into()),
                    TokenMatch::NoSystem("c".into()),
                    TokenMatch::Value("d".into()),
                    TokenMatch::System("e".into()),
                    TokenMatch::SystemValue("x|y".into(), "z,w".into()),
                ]
            }]
        );
    }

    #[test]
    fn patient_param_implies_the_patient_type() {
        let (q, _) =
            parse_search(ResourceType::Encounter, &pairs(&[("patient", "p1")]), true).unwrap();
        assert_eq!(
            q.clauses,
            [Clause::Reference {
                param: "patient",
                any_of: vec![(Some("Patient".into()), "p1".into())]
            }]
        );
    }

    #[test]
    fn refuses_unknown_parameters_unless_lenient() {
        let err = parse_search(ResourceType::Patient, &pairs(&[("name", "x")]), true).unwrap_err();
        assert_eq!(err.code, "not-supported");
        assert_eq!(err.expression, ["Patient?name"]);
        let (_, skipped) =
            parse_search(ResourceType::Patient, &pairs(&[("name", "x")]), false).unwrap();
        assert_eq!(skipped.len(), 1);
    }

    #[test]
    fn refuses_bad_counts_and_dates() {
        for (k, v) in [
            ("_count", "-1"),
            ("_count", "many"),
            ("date", "ge2020-13-01"),
        ] {
            assert!(
                parse_search(ResourceType::Encounter, &pairs(&[(k, v)]), true).is_err(),
                "{k}={v}"
            );
        }
    }

    #[test]
    fn a_count_over_the_most_is_capped_with_a_warning() {
        for strict in [true, false] {
            let (query, warnings) =
                parse_search(ResourceType::Patient, &pairs(&[("_count", "5000")]), strict).unwrap();
            assert_eq!(query.count, MAX_COUNT);
            assert_eq!(warnings.len(), 1);
            assert_eq!(
                warnings[0].severity,
                super::super::outcome::Severity::Warning
            );
        }
    }

    #[test]
    fn refuses_too_many_criteria() {
        let many: Vec<(String, String)> = (0..=MAX_CRITERIA)
            .map(|i| ("identifier".to_string(), format!("x{i}")))
            .collect();
        let err = parse_search(ResourceType::Patient, &many, true).unwrap_err();
        assert_eq!(err.code, "too-costly");
    }

    #[test]
    fn date_prefixes_follow_the_range_rules() {
        let day = datetime::parse_range("2020-01-02").unwrap();
        let inside = datetime::parse_range("2020-01-02T12:00").unwrap();
        let spanning = Range {
            start: datetime::parse_range("2020-01-01").unwrap().start,
            end: datetime::parse_range("2020-01-03").unwrap().end,
        };
        assert!(DatePrefix::Eq.matches(inside, day));
        assert!(!DatePrefix::Eq.matches(spanning, day));
        assert!(DatePrefix::Ge.matches(inside, day));
        assert!(DatePrefix::Ge.matches(spanning, day));
        assert!(DatePrefix::Le.matches(spanning, day));
        assert!(!DatePrefix::Gt.matches(inside, day));
        assert!(!DatePrefix::Lt.matches(inside, day));
        assert!(DatePrefix::Ne.matches(spanning, day));
    }
}
