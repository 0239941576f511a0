//! Local terminology: the CodeSystems and ValueSets under `profiles/`,
//! expanded at start-up into sets of (system, code) that bindings test
//! membership against.
//!
//! A ValueSet that includes a whole code system the gateway does not hold
//! (SNOMED CT, say) cannot be expanded here: such a binding is reported by
//! `check-profiles` and not enforced, rather than failing every code.

use crate::hashing::{FastMap, FastSet};
use serde_json::Value;

/// The codes of a ValueSet, by system.
#[derive(Debug, Clone, Default)]
pub struct ValueSetCodes {
    pub url: String,
    /// system → codes; an empty system key holds none.
    codes: FastMap<String, FastSet<String>>,
    /// Systems included whole but not held here: membership cannot be decided.
    pub unresolved: Vec<String>,
}

impl ValueSetCodes {
    /// Is the coding a member? `None` when the system is one the value set
    /// includes but cannot expand.
    pub fn contains(&self, system: Option<&str>, code: &str) -> Option<bool> {
        match system {
            Some(system) => {
                if self.unresolved.iter().any(|s| s == system) {
                    return None;
                }
                Some(self.codes.get(system).is_some_and(|c| c.contains(code)))
            }
            None => {
                if self.codes.values().any(|c| c.contains(code)) {
                    Some(true)
                } else if self.unresolved.is_empty() {
                    Some(false)
                } else {
                    None
                }
            }
        }
    }

    /// `system|code, …` for a diagnostic, cut short if long.
    pub fn describe(&self) -> String {
        let mut all: Vec<&str> = self.codes.values().flatten().map(String::as_str).collect();
        all.sort_unstable();
        const SHOWN: usize = 12;
        let mut text = all
            .iter()
            .take(SHOWN)
            .copied()
            .collect::<Vec<_>>()
            .join(", ");
        if all.len() > SHOWN {
            text.push_str(&format!(", … ({} codes)", all.len()));
        }
        text
    }

    pub fn is_empty(&self) -> bool {
        self.codes.values().all(FastSet::is_empty) && self.unresolved.is_empty()
    }
}

/// Expands the ValueSets among `resources` with the CodeSystems among them.
/// Returns the expansions and the problems found (unknown systems, codes
/// not in their system).
pub fn expand_value_sets(
    resources: &[(String, Value)],
) -> (FastMap<String, ValueSetCodes>, Vec<String>) {
    let mut systems: FastMap<&str, Vec<&str>> = FastMap::default();
    for (_, resource) in resources {
        if resource["resourceType"] == "CodeSystem"
            && let Some(url) = resource["url"].as_str()
        {
            let mut codes = Vec::new();
            collect_concepts(&resource["concept"], &mut codes);
            systems.insert(url, codes);
        }
    }
    let mut problems = Vec::new();
    let mut out = FastMap::default();
    for (file, resource) in resources {
        if resource["resourceType"] != "ValueSet" {
            continue;
        }
        let Some(url) = resource["url"].as_str() else {
            problems.push(format!("{file}: a ValueSet without a url"));
            continue;
        };
        let mut expansion = ValueSetCodes {
            url: url.to_string(),
            ..ValueSetCodes::default()
        };
        for include in resource["compose"]["include"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let Some(system) = include["system"].as_str() else {
                problems.push(format!(
                    "{file}: an include without a system (only system includes are supported)"
                ));
                continue;
            };
            let known = systems.get(system);
            let set = expansion.codes.entry(system.to_string()).or_default();
            match include["concept"].as_array() {
                Some(concepts) => {
                    for concept in concepts {
                        let Some(code) = concept["code"].as_str() else {
                            continue;
                        };
                        if let Some(known) = known
                            && !known.contains(&code)
                        {
                            problems
                                .push(format!("{file}: code {code} is not in CodeSystem {system}"));
                        }
                        set.insert(code.to_string());
                    }
                }
                None => match known {
                    Some(known) => set.extend(known.iter().map(|c| c.to_string())),
                    None => {
                        problems.push(format!(
                            "{file}: includes all of {system}, which is not under profiles/, so the binding cannot be checked"
                        ));
                        expansion.unresolved.push(system.to_string());
                    }
                },
            }
            if include.get("filter").is_some() {
                problems.push(format!(
                    "{file}: include filters are not supported and are ignored"
                ));
            }
        }
        out.insert(url.to_string(), expansion);
    }
    (out, problems)
}

fn collect_concepts<'a>(concepts: &'a Value, out: &mut Vec<&'a str>) {
    for concept in concepts.as_array().into_iter().flatten() {
        if let Some(code) = concept["code"].as_str() {
            out.push(code);
        }
        collect_concepts(&concept["concept"], out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn expands_explicit_and_whole_system_includes() {
        let resources = vec![
            (
                "cs.json".to_string(),
                json!({"resourceType": "CodeSystem", "url": "http://x/cs",
                       "concept": [{"code": "a"}, {"code": "b", "concept": [{"code": "b1"}]}]}),
            ),
            (
                "vs.json".to_string(),
                json!({"resourceType": "ValueSet", "url": "http://x/vs",
                       "compose": {"include": [{"system": "http://x/cs"},
                                               {"system": "http://other", "concept": [{"code": "z"}]}]}}),
            ),
            (
                "vs2.json".to_string(),
                json!({"resourceType": "ValueSet", "url": "http://x/vs2",
                       "compose": {"include": [{"system": "http://snomed.info/sct"}]}}),
            ),
        ];
        let (sets, problems) = expand_value_sets(&resources);
        let vs = &sets["http://x/vs"];
        assert_eq!(vs.contains(Some("http://x/cs"), "b1"), Some(true));
        assert_eq!(vs.contains(Some("http://x/cs"), "c"), Some(false));
        assert_eq!(vs.contains(None, "z"), Some(true));
        assert_eq!(vs.contains(Some("http://y"), "a"), Some(false));
        let vs2 = &sets["http://x/vs2"];
        assert_eq!(vs2.contains(Some("http://snomed.info/sct"), "123"), None);
        assert_eq!(problems.len(), 1, "{problems:?}");
    }
}
