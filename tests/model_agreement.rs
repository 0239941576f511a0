//! The validator against fhir-sdk's typed model, as an independent oracle:
//! thousands of mutations of valid resources, and whatever the typed model
//! refuses, base validation must refuse too. (The reverse is not expected:
//! the model misses unknown elements, empty strings and bad ids; those are
//! counted and must be caught by the validator alone.)

mod common;

use common::{care_plan, encounter, nhs_number, patient, service_request};
use pathway_gateway::validate::{Validator, has_errors};
use serde_json::{Value, json};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Replacement values: every JSON kind, and strings FHIR refuses.
fn odd_value(rng: &mut Rng) -> Value {
    let choices = [
        json!(null),
        json!(true),
        json!(0),
        json!(-1),
        json!(1.5),
        json!(""),
        json!(" "),
        json!("2024-02-30"),
        json!("2024-13-01"),
        json!("2024-01-01T10:00:00"),
        json!("not a code at  all"),
        json!("unknown-code"),
        json!([]),
        json!(["x"]),
        json!({}),
        json!({"text": "x"}),
        json!({"reference": "Nothing/1"}),
    ];
    choices[rng.below(choices.len())].clone()
}

/// Every path to a value in the resource (objects and arrays included).
fn paths(value: &Value, prefix: &mut Vec<PathStep>, out: &mut Vec<Vec<PathStep>>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                if k == "resourceType" {
                    continue;
                }
                prefix.push(PathStep::Key(k.clone()));
                out.push(prefix.clone());
                paths(v, prefix, out);
                prefix.pop();
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                prefix.push(PathStep::Index(i));
                out.push(prefix.clone());
                paths(v, prefix, out);
                prefix.pop();
            }
        }
        _ => {}
    }
}

#[derive(Clone, Debug)]
enum PathStep {
    Key(String),
    Index(usize),
}

fn at_mut<'a>(value: &'a mut Value, path: &[PathStep]) -> Option<&'a mut Value> {
    let mut current = value;
    for step in path {
        current = match step {
            PathStep::Key(k) => current.get_mut(k.as_str())?,
            PathStep::Index(i) => current.get_mut(*i)?,
        };
    }
    Some(current)
}

#[test]
fn whatever_the_typed_model_refuses_the_validator_refuses() {
    let validator = Validator::embedded().unwrap();
    let mut seeds = [
        patient(&nhs_number(1), "Smith"),
        encounter(
            "Patient/p1",
            "EMER",
            "2024-03-31T00:30:00+00:00",
            Some("2024-03-31T04:00:00+01:00"),
        ),
        care_plan("Patient/p1"),
        service_request("Patient/p1"),
    ];
    seeds[0]["telecom"] = json!([{"system": "phone", "value": "020 8000 0000", "rank": 1}]);
    seeds[0]["deceasedBoolean"] = json!(false);
    seeds[1]["length"] =
        json!({"value": 3, "unit": "h", "system": "http://unitsofmeasure.org", "code": "h"});
    seeds[3]["occurrencePeriod"] = json!({"start": "2024-05-01", "end": "2024-05-02"});

    let mut rng = Rng(11);
    let (mut both, mut only_validator, mut tried) = (0, 0, 0);
    for round in 0..4000 {
        let mut resource = seeds[round % seeds.len()].clone();
        let mut all = Vec::new();
        paths(&resource, &mut Vec::new(), &mut all);
        let path = &all[rng.below(all.len())];
        let replacement = odd_value(&mut rng);
        if let Some(slot) = at_mut(&mut resource, path) {
            *slot = replacement;
        }
        tried += 1;
        let ty = resource["resourceType"].as_str().unwrap().to_string();
        let bytes = serde_json::to_vec(&resource).unwrap();
        let model_refuses = pathway_model::check_resource(&ty, &bytes).is_err();
        let issues = validator.validate_base(&resource);
        let validator_refuses = has_errors(&issues);
        assert!(
            !model_refuses || validator_refuses,
            "the typed model refuses but the validator accepts:\n{}\nmodel: {:?}",
            serde_json::to_string_pretty(&resource).unwrap(),
            pathway_model::check_resource(&ty, &bytes)
        );
        match (model_refuses, validator_refuses) {
            (true, true) => both += 1,
            (false, true) => only_validator += 1,
            _ => {}
        }
    }
    println!("{tried} mutations: {both} refused by both, {only_validator} by the validator alone");
    assert!(
        both > 500 && only_validator > 100,
        "{both} {only_validator}"
    );
}
