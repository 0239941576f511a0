//! Routing rules and triggers: what configuration says, compiled to FHIRPath,
//! and the One Bromley defaults of the contract's pathway rules.
//!
//! A **rule** sends every version of a resource that matches it to its
//! destinations. A **trigger** creates a pathway referral (a ServiceRequest)
//! when a resource matches it; rules then route that referral like any other.
//! Expressions are FHIRPath over the resource, with these variables:
//!
//! | variable | value |
//! | --- | --- |
//! | `%patient` | the Patient the resource is about (the resource itself for a Patient) |
//! | `%carePlans` | that patient's CarePlans |
//! | `%careHome` | the care home the patient lives in, from the register: `ods`, `name`, `postcode` |
//! | `%age` | the patient's age in whole years today (Europe/London) |

use crate::fhir::ResourceType;
use crate::fhirpath::{Env, Expression, Item};
use crate::gp::map::{PATHWAY_SYSTEM, REFERRAL_SYSTEM};
use crate::hl7v2::adt::DISCHARGE_DESTINATION_SYSTEM;
use serde::Deserialize;
use serde_json::Value;

/// The variables expressions may use.
pub const VARIABLES: &[&str] = &["patient", "carePlans", "careHome", "age"];

/// `[routing]`: rules and triggers. The One Bromley defaults apply unless
/// `defaults = false`; a rule or trigger with a default's name replaces it
/// (`enabled = false` turns it off).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    pub defaults: bool,
    pub rules: Vec<RuleConfig>,
    pub triggers: Vec<TriggerConfig>,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            defaults: true,
            rules: Vec::new(),
            triggers: Vec::new(),
        }
    }
}

/// `[[routing.rules]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub name: String,
    /// The resource type it looks at.
    #[serde(default)]
    pub resource: Option<String>,
    /// A FHIRPath expression that is `true` for resources to send.
    #[serde(default)]
    pub when: Option<String>,
    /// Destination names (`[destinations.NAME]`).
    #[serde(default)]
    pub to: Vec<String>,
    #[serde(default = "enabled")]
    pub enabled: bool,
}

/// `[[routing.triggers]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerConfig {
    pub name: String,
    #[serde(default)]
    pub resource: Option<String>,
    #[serde(default)]
    pub when: Option<String>,
    /// The `pathway-referral` code of the ServiceRequest it creates.
    #[serde(default)]
    pub create: Option<String>,
    #[serde(default = "enabled")]
    pub enabled: bool,
}

fn enabled() -> bool {
    true
}

/// A pathway referral a trigger can create, and who acts on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Referral {
    pub code: &'static str,
    pub display: &'static str,
    /// `care-pathway` code (the ServiceRequest's category).
    pub pathway: &'static str,
    pub pathway_display: &'static str,
    /// The pathway service that performs it (`pathway-service` identifier).
    pub service: &'static str,
    pub service_display: &'static str,
}

#[rustfmt::skip]
pub const REFERRALS: &[Referral] = &[
    referral("proactive-care-assessment", "Proactive care: community matron initial assessment", PROACTIVE),
    referral("at-home-admission-avoidance", "Bromley @Home: admission avoidance", AT_HOME),
    referral("at-home-supported-discharge", "Bromley @Home: early supported discharge", AT_HOME),
    referral("care-home-admission-assessment", "Care home: comprehensive medical assessment on admission", CARE_HOME),
    referral("care-home-periodic-assessment", "Care home: periodic comprehensive medical assessment", CARE_HOME),
    referral("care-home-post-discharge-review", "Care home: post-discharge assessment and medicines review", CARE_HOME),
    referral("care-home-medicines-review", "Care home: medicines review", CARE_HOME),
    referral("care-home-urgent-visit", "Care home: urgent same-day visit", CARE_HOME),
];

type Pathway = (&'static str, &'static str, &'static str, &'static str);
const PROACTIVE: Pathway = (
    "proactive-care",
    "Proactive care",
    "proactive-care-mdt",
    "Proactive care MDT",
);
const AT_HOME: Pathway = (
    "bromley-at-home",
    "Bromley @Home",
    "bromley-at-home",
    "Bromley @Home",
);
const CARE_HOME: Pathway = (
    "care-home",
    "Care homes",
    "care-home-gp",
    "Care-home GP service",
);

const fn referral(code: &'static str, display: &'static str, pathway: Pathway) -> Referral {
    Referral {
        code,
        display,
        pathway: pathway.0,
        pathway_display: pathway.1,
        service: pathway.2,
        service_display: pathway.3,
    }
}

pub fn referral_for(code: &str) -> Option<&'static Referral> {
    REFERRALS.iter().find(|r| r.code == code)
}

/// The One Bromley rules (contract, "Pathway rules"): name, resource, when, to.
fn default_rules() -> Vec<(String, &'static str, String, &'static str)> {
    let referral =
        |test: &str| format!("code.coding.where(system = '{REFERRAL_SYSTEM}' and {test}).exists()");
    vec![
        (
            "proactive-care-referral".into(),
            "ServiceRequest",
            referral("code = 'proactive-care-assessment'"),
            "proactive-care-mdt",
        ),
        (
            "proactive-care-urgent-contact".into(),
            "Encounter",
            format!(
                "(class.code = 'EMER' or (class.code = 'IMP' and priority.coding.where(code = 'EL' or code = 'R').empty())) \
                 and %carePlans.where(status = 'active' and category.coding.where(system = '{PATHWAY_SYSTEM}' and code = 'proactive-care').exists()).exists()"
            ),
            "proactive-care-mdt",
        ),
        (
            "bromley-at-home-referral".into(),
            "ServiceRequest",
            referral("code.startsWith('at-home-')"),
            "bromley-at-home",
        ),
        (
            "care-home-referral".into(),
            "ServiceRequest",
            referral("code.startsWith('care-home-')"),
            "care-home-gp",
        ),
    ]
}

/// The One Bromley triggers: name, resource, when, creates.
fn default_triggers() -> Vec<(String, &'static str, String, &'static str)> {
    let discharged_to = |codes: &[&str]| {
        let test = codes
            .iter()
            .map(|c| format!("code = '{c}'"))
            .collect::<Vec<_>>()
            .join(" or ");
        format!(
            "hospitalization.dischargeDisposition.coding.where(system = '{DISCHARGE_DESTINATION_SYSTEM}' and ({test})).exists()"
        )
    };
    vec![
        (
            // A hospital discharge of a care-home resident (by the register),
            // or to a care home (NHS, local authority or independent: 54, 65,
            // 85), unless the patient died (79).
            "care-home-post-discharge-review".into(),
            "Encounter",
            format!(
                "status = 'finished' and class.code = 'IMP' and (%careHome.exists() or {}) and {}.not()",
                discharged_to(&["54", "65", "85"]),
                discharged_to(&["79"]),
            ),
            "care-home-post-discharge-review",
        ),
        (
            // A discharge to the usual place of residence (19) of a patient
            // aged 65 or over who does not live in a care home.
            "at-home-supported-discharge".into(),
            "Encounter",
            format!(
                "status = 'finished' and class.code = 'IMP' and %age >= 65 and %careHome.empty() and {}",
                discharged_to(&["19"])
            ),
            "at-home-supported-discharge",
        ),
    ]
}

/// What an expression needs computed before it can be evaluated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Uses {
    pub patient: bool,
    pub care_plans: bool,
    pub care_home: bool,
    pub age: bool,
}

impl Uses {
    fn of(expression: &str) -> Uses {
        // `%patient` is a prefix of nothing else; the others are exact.
        Uses {
            patient: expression.contains("%patient"),
            care_plans: expression.contains("%carePlans"),
            care_home: expression.contains("%careHome"),
            age: expression.contains("%age"),
        }
    }

    pub fn union(self, other: Uses) -> Uses {
        Uses {
            patient: self.patient || other.patient,
            care_plans: self.care_plans || other.care_plans,
            care_home: self.care_home || other.care_home,
            age: self.age || other.age,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub resource: ResourceType,
    pub when: Expression,
    pub to: Vec<String>,
    pub uses: Uses,
}

#[derive(Debug, Clone)]
pub struct Trigger {
    pub name: String,
    pub resource: ResourceType,
    pub when: Expression,
    pub creates: &'static Referral,
    pub uses: Uses,
}

/// Every rule and trigger in force.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    pub rules: Vec<Rule>,
    pub triggers: Vec<Trigger>,
}

impl Rules {
    /// Compiles configuration (with the defaults unless turned off).
    /// Errors name the rule and say what is wrong.
    pub fn compile(config: &RoutingConfig) -> Result<Rules, String> {
        let mut rules: Vec<RuleConfig> = Vec::new();
        let mut triggers: Vec<TriggerConfig> = Vec::new();
        if config.defaults {
            rules.extend(
                default_rules()
                    .into_iter()
                    .map(|(name, resource, when, to)| RuleConfig {
                        name,
                        resource: Some(resource.into()),
                        when: Some(when),
                        to: vec![to.into()],
                        enabled: true,
                    }),
            );
            triggers.extend(default_triggers().into_iter().map(
                |(name, resource, when, create)| TriggerConfig {
                    name,
                    resource: Some(resource.into()),
                    when: Some(when),
                    create: Some(create.into()),
                    enabled: true,
                },
            ));
        }
        for rule in &config.rules {
            match rules.iter_mut().find(|r| r.name == rule.name) {
                Some(default) => *default = rule.clone(),
                None => rules.push(rule.clone()),
            }
        }
        for trigger in &config.triggers {
            match triggers.iter_mut().find(|t| t.name == trigger.name) {
                Some(default) => *default = trigger.clone(),
                None => triggers.push(trigger.clone()),
            }
        }
        let mut compiled = Rules::default();
        let mut seen = std::collections::HashSet::new();
        for rule in rules.into_iter().filter(|r| r.enabled) {
            let at = format!("routing rule `{}`", rule.name);
            if !seen.insert(rule.name.clone()) {
                return Err(format!("{at} is defined twice"));
            }
            let (resource, when) =
                compile_target(&at, rule.resource.as_deref(), rule.when.as_deref())?;
            if rule.to.is_empty() {
                return Err(format!("{at}: `to` names no destination"));
            }
            compiled.rules.push(Rule {
                uses: Uses::of(when.source()),
                name: rule.name,
                resource,
                when,
                to: rule.to,
            });
        }
        seen.clear();
        for trigger in triggers.into_iter().filter(|t| t.enabled) {
            let at = format!("routing trigger `{}`", trigger.name);
            if !seen.insert(trigger.name.clone()) {
                return Err(format!("{at} is defined twice"));
            }
            let (resource, when) =
                compile_target(&at, trigger.resource.as_deref(), trigger.when.as_deref())?;
            let code = trigger
                .create
                .as_deref()
                .ok_or_else(|| format!("{at}: `create` is missing (a pathway-referral code)"))?;
            let creates = referral_for(code).ok_or_else(|| {
                let known: Vec<_> = REFERRALS.iter().map(|r| r.code).collect();
                format!(
                    "{at}: `create = \"{code}\"` is not a pathway-referral code ({})",
                    known.join(", ")
                )
            })?;
            compiled.triggers.push(Trigger {
                uses: Uses::of(when.source()),
                name: trigger.name,
                resource,
                when,
                creates,
            });
        }
        Ok(compiled)
    }

    /// Every destination some rule names.
    pub fn destinations(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .rules
            .iter()
            .flat_map(|r| r.to.iter().map(String::as_str))
            .collect();
        names.sort_unstable();
        names.dedup();
        names
    }

    /// What the rules and triggers on `ty` need computed.
    pub fn uses(&self, ty: ResourceType) -> Uses {
        let rules = self
            .rules
            .iter()
            .filter(|r| r.resource == ty)
            .map(|r| r.uses);
        let triggers = self
            .triggers
            .iter()
            .filter(|t| t.resource == ty)
            .map(|t| t.uses);
        rules.chain(triggers).fold(Uses::default(), Uses::union)
    }
}

fn compile_target(
    at: &str,
    resource: Option<&str>,
    when: Option<&str>,
) -> Result<(ResourceType, Expression), String> {
    let resource = resource.ok_or_else(|| format!("{at}: `resource` is missing"))?;
    let ty = ResourceType::parse(resource).ok_or_else(|| {
        format!("{at}: `resource = \"{resource}\"` is not a resource type the gateway stores")
    })?;
    let when = when.ok_or_else(|| format!("{at}: `when` is missing (a FHIRPath expression)"))?;
    let expression = Expression::parse_with(when, VARIABLES)
        .map_err(|err| format!("{at}: `when` is not valid FHIRPath {err}: {when}"))?;
    Ok((ty, expression))
}

/// Does `expression` hold? `true` only for a single `true`; empty is false.
pub fn holds(expression: &Expression, env: &Env<'_>) -> Result<bool, String> {
    let items = expression.evaluate(env).map_err(|e| e.to_string())?;
    match items.as_slice() {
        [] => Ok(false),
        [Item::Boolean(b)] => Ok(*b),
        [
            Item::Node {
                value: Value::Bool(b),
                ..
            },
        ] => Ok(*b),
        [other] => Err(format!("gave {other:?}, not a boolean")),
        many => Err(format!("gave {} items, not a single boolean", many.len())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn defaults() -> Rules {
        Rules::compile(&RoutingConfig::default()).expect("defaults compile")
    }

    fn check(expression: &Expression, resource: &Value, vars: &[(&str, &Value)]) -> bool {
        let env = Env {
            vars,
            ..Env::new(resource)
        };
        holds(expression, &env).expect("evaluates")
    }

    fn rule<'a>(rules: &'a Rules, name: &str) -> &'a Expression {
        &rules.rules.iter().find(|r| r.name == name).unwrap().when
    }

    fn trigger<'a>(rules: &'a Rules, name: &str) -> &'a Expression {
        &rules.triggers.iter().find(|r| r.name == name).unwrap().when
    }

    fn plan(status: &str) -> Value {
        json!([{"resourceType": "CarePlan", "status": status,
            "category": [{"coding": [{"system": PATHWAY_SYSTEM, "code": "proactive-care"}]}]}])
    }

    #[test]
    fn urgent_contacts_of_patients_on_the_pathway_go_to_the_mdt() {
        let rules = defaults();
        let when = rule(&rules, "proactive-care-urgent-contact");
        let ed =
            json!({"resourceType": "Encounter", "status": "arrived", "class": {"code": "EMER"}});
        let elective = json!({"resourceType": "Encounter", "class": {"code": "IMP"},
            "priority": {"coding": [{"code": "EL"}]}});
        let emergency = json!({"resourceType": "Encounter", "class": {"code": "IMP"},
            "priority": {"coding": [{"code": "EM"}]}});
        let outpatient = json!({"resourceType": "Encounter", "class": {"code": "AMB"}});
        let (active, draft, none) = (plan("active"), plan("draft"), json!([]));
        assert!(check(when, &ed, &[("carePlans", &active)]));
        assert!(check(when, &emergency, &[("carePlans", &active)]));
        assert!(!check(when, &elective, &[("carePlans", &active)]));
        assert!(!check(when, &outpatient, &[("carePlans", &active)]));
        assert!(!check(when, &ed, &[("carePlans", &draft)]));
        assert!(!check(when, &ed, &[("carePlans", &none)]));
        assert!(!check(when, &ed, &[]));
    }

    #[test]
    fn referrals_go_to_their_pathway_service() {
        let rules = defaults();
        let sr = |code: &str| {
            json!({"resourceType": "ServiceRequest",
                "code": {"coding": [{"system": REFERRAL_SYSTEM, "code": code}]}})
        };
        assert!(check(
            rule(&rules, "proactive-care-referral"),
            &sr("proactive-care-assessment"),
            &[]
        ));
        assert!(!check(
            rule(&rules, "proactive-care-referral"),
            &sr("at-home-supported-discharge"),
            &[]
        ));
        assert!(check(
            rule(&rules, "bromley-at-home-referral"),
            &sr("at-home-supported-discharge"),
            &[]
        ));
        assert!(check(
            rule(&rules, "care-home-referral"),
            &sr("care-home-post-discharge-review"),
            &[]
        ));
        assert!(!check(
            rule(&rules, "care-home-referral"),
            &sr("at-home-admission-avoidance"),
            &[]
        ));
        let other_system = json!({"resourceType": "ServiceRequest",
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "proactive-care-assessment"}]}});
        assert!(!check(
            rule(&rules, "proactive-care-referral"),
            &other_system,
            &[]
        ));
    }

    fn discharge(class: &str, destination: &str) -> Value {
        json!({"resourceType": "Encounter", "status": "finished", "class": {"code": class},
            "hospitalization": {"dischargeDisposition": {"coding": [
                {"system": DISCHARGE_DESTINATION_SYSTEM, "code": destination}]}}})
    }

    #[test]
    fn care_home_discharges_trigger_a_review_unless_the_patient_died() {
        let rules = defaults();
        let when = trigger(&rules, "care-home-post-discharge-review");
        let home = json!({"ods": "VM123", "name": "Elm House", "postcode": "BR1 1AA"});
        assert!(check(when, &discharge("IMP", "19"), &[("careHome", &home)]));
        assert!(check(when, &discharge("IMP", "85"), &[]));
        assert!(!check(when, &discharge("IMP", "19"), &[]));
        assert!(!check(
            when,
            &discharge("IMP", "79"),
            &[("careHome", &home)]
        ));
        assert!(!check(
            when,
            &discharge("EMER", "19"),
            &[("careHome", &home)]
        ));
        let mut in_progress = discharge("IMP", "85");
        in_progress["status"] = json!("in-progress");
        assert!(!check(when, &in_progress, &[]));
    }

    #[test]
    fn a_discharge_home_at_65_or_over_triggers_bromley_at_home() {
        let rules = defaults();
        let when = trigger(&rules, "at-home-supported-discharge");
        let (old, young) = (json!(65), json!(64));
        let home = json!({"ods": "VM123"});
        assert!(check(when, &discharge("IMP", "19"), &[("age", &old)]));
        assert!(!check(when, &discharge("IMP", "19"), &[("age", &young)]));
        assert!(!check(when, &discharge("IMP", "19"), &[]));
        assert!(!check(when, &discharge("IMP", "54"), &[("age", &old)]));
        assert!(!check(
            when,
            &discharge("IMP", "19"),
            &[("age", &old), ("careHome", &home)]
        ));
    }

    #[test]
    fn configuration_replaces_disables_and_adds_by_name() {
        let config: RoutingConfig = toml::from_str(
            r#"
            [[rules]]
            name = "care-home-referral"
            enabled = false
            [[rules]]
            name = "ed-to-audit"
            resource = "Encounter"
            when = "class.code = 'EMER'"
            to = ["audit"]
            [[triggers]]
            name = "at-home-supported-discharge"
            resource = "Encounter"
            when = "status = 'finished' and %age >= 75"
            create = "at-home-supported-discharge"
            "#,
        )
        .unwrap();
        let rules = Rules::compile(&config).unwrap();
        let names: Vec<_> = rules.rules.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "proactive-care-referral",
                "proactive-care-urgent-contact",
                "bromley-at-home-referral",
                "ed-to-audit"
            ]
        );
        assert_eq!(
            rules.destinations(),
            ["audit", "bromley-at-home", "proactive-care-mdt"]
        );
        let at_home = trigger(&rules, "at-home-supported-discharge");
        assert!(at_home.source().contains("75"));
        assert!(rules.uses(ResourceType::Encounter).age);
        assert!(!rules.uses(ResourceType::ServiceRequest).care_plans);
    }

    #[test]
    fn bad_rules_are_refused_naming_the_rule_and_the_problem() {
        let refuse = |toml_text: &str| {
            let config: RoutingConfig = toml::from_str(toml_text).unwrap();
            Rules::compile(&config).unwrap_err()
        };
        let err = refuse(
            "[[rules]]\nname = \"x\"\nresource = \"Encounter\"\nwhen = \"class.code = \"\nto = [\"a\"]",
        );
        assert!(
            err.contains("routing rule `x`") && err.contains("FHIRPath"),
            "{err}"
        );
        let err = refuse(
            "[[rules]]\nname = \"x\"\nresource = \"Encounter\"\nwhen = \"%nobody.exists()\"\nto = [\"a\"]",
        );
        assert!(err.contains("%nobody"), "{err}");
        let err = refuse(
            "[[rules]]\nname = \"x\"\nresource = \"Observation\"\nwhen = \"true\"\nto = [\"a\"]",
        );
        assert!(err.contains("Observation"), "{err}");
        let err = refuse("[[rules]]\nname = \"x\"\nresource = \"Encounter\"\nwhen = \"true\"");
        assert!(err.contains("`to`"), "{err}");
        let err = refuse(
            "[[triggers]]\nname = \"t\"\nresource = \"Encounter\"\nwhen = \"true\"\ncreate = \"tea\"",
        );
        assert!(
            err.contains("pathway-referral") && err.contains("tea"),
            "{err}"
        );
    }
}
