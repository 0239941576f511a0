//! No input panics: the hand-written parsers of this module fed with
//! thousands of garbled variants of valid input (a small deterministic
//! generator, so a failure reproduces).

use super::ResourceType;
use super::datetime::parse_range;
use super::json::{
    array_elements, minify, object_members, reference_values, rewrite_references, write_value,
};
use super::resource::prepare;
use super::search::{parse_search, reference_target};
use crate::hashing::FastMap;

/// xorshift64*: deterministic, dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const PIECES: [&str; 24] = [
    "\"",
    "\\",
    "{",
    "}",
    "[",
    "]",
    ":",
    ",",
    " ",
    "\n",
    "é",
    "€",
    "😀",
    "0",
    "9",
    "-",
    "+",
    "T",
    "Z",
    ".",
    "|",
    "$",
    "urn:uuid:1",
    "\\u00e9",
];

/// Variants of `seed`: bytes cut, pieces inserted, characters replaced.
fn garble(seed: &str, rng: &mut Rng) -> String {
    let mut text: Vec<char> = seed.chars().collect();
    for _ in 0..=rng.below(4) {
        match rng.below(3) {
            0 if !text.is_empty() => {
                let at = rng.below(text.len());
                text.truncate(at.max(1));
            }
            1 => {
                let at = rng.below(text.len() + 1);
                let piece: Vec<char> = PIECES[rng.below(PIECES.len())].chars().collect();
                text.splice(at..at, piece);
            }
            _ if !text.is_empty() => {
                let at = rng.below(text.len());
                text[at] = PIECES[rng.below(PIECES.len())]
                    .chars()
                    .next()
                    .unwrap_or('x');
            }
            _ => {}
        }
    }
    text.into_iter().collect()
}

#[test]
fn dates_never_panic() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for seed in [
        "2020-03-29T01:30:00.123+01:00",
        "2020-02",
        "2019",
        "2020-12-31T23:59:59Z",
    ] {
        for _ in 0..5_000 {
            let _ = parse_range(&garble(seed, &mut rng));
        }
    }
}

#[test]
fn json_surgery_never_panics_on_text_serde_accepts() {
    let mut rng = Rng(42);
    let seed = r#"{"resourceType":"Patient","a":[1,2.50,{"b":"c\"d\\"}],"e":"urn:uuid:1","f":"é😀","g":null}"#;
    let map = FastMap::from_iter([("urn:uuid:1".to_string(), "Patient/x".to_string())]);
    let mut accepted = 0;
    let validator = crate::validate::Validator::embedded().unwrap();
    for _ in 0..20_000 {
        let text = garble(seed, &mut rng);
        let _ = prepare(text.as_bytes(), None, &validator);
        let _ = prepare(text.as_bytes(), Some(ResourceType::Patient), &validator);
        if serde_json::from_str::<serde_json::Value>(&text).is_ok() {
            accepted += 1;
            let _ = object_members(&text);
            let _ = array_elements(&text);
            let compact = minify(&text);
            let rewritten = rewrite_references(&compact, &map);
            assert!(
                serde_json::from_str::<serde_json::Value>(&rewritten).is_ok(),
                "{text} became {rewritten}"
            );
        }
    }
    assert!(
        accepted > 100,
        "the generator must also make valid JSON ({accepted})"
    );
}

#[test]
fn search_parsing_never_panics() {
    let mut rng = Rng(7);
    for _ in 0..10_000 {
        let value = garble(
            "https://fhir.nhs.uk/Id/nhs-number|999\\,123,ge2020-01-01",
            &mut rng,
        );
        for name in [
            "identifier",
            "patient",
            "subject",
            "date",
            "status",
            "_id",
            "_count",
            "_cursor",
        ] {
            let pairs = vec![(name.to_string(), value.clone())];
            let _ = parse_search(ResourceType::Encounter, &pairs, true);
        }
        let _ = reference_target(&value);
    }
}

/// The spans of `reference` string values found by walking every string
/// token, as the gateway did before it searched for `"reference":"`.
fn references_walked(compact: &str) -> Vec<(usize, usize)> {
    let bytes = compact.as_bytes();
    let string_end = |mut pos: usize| {
        pos += 1;
        while pos < bytes.len() {
            match bytes[pos] {
                b'\\' => pos += 2,
                b'"' => return pos + 1,
                _ => pos += 1,
            }
        }
        bytes.len()
    };
    let (mut spans, mut pos, mut after_key) = (Vec::new(), 0, false);
    while pos < bytes.len() {
        if bytes[pos] != b'"' {
            pos += 1;
            continue;
        }
        let start = pos;
        pos = string_end(pos).min(bytes.len());
        if bytes.get(pos) == Some(&b':') {
            after_key = &compact[start..pos] == "\"reference\"";
        } else if std::mem::take(&mut after_key) {
            spans.push((start, pos));
        }
    }
    spans
}

#[test]
fn references_found_by_search_are_those_a_walk_finds() {
    let mut rng = Rng(0xD1B5_4A32_D192_ED03);
    let seeds = [
        r#"{"resourceType":"Encounter","subject":{"reference":"urn:uuid:1"},"basedOn":[{"reference":"ServiceRequest/a"},{"reference":"urn:uuid:12","display":"x"}]}"#,
        // A name ending in `\"reference`, and values holding the text of one.
        r#"{"x\"reference":"urn:uuid:1","note":[{"text":"a,\"reference\":\"b"}],"y":{"reference":"c\\"}}"#,
        r#"{"reference":"","a":{"reference":"\u00e9\"q"},"b":["reference",{"reference":"z"}]}"#,
    ];
    let mut valid = 0;
    for seed in seeds {
        for _ in 0..10_000 {
            let text = garble(seed, &mut rng);
            // Only minified JSON is searched (what the store writes).
            let Ok(value) = serde_json::from_str::<serde_json::Value>(&text) else {
                continue;
            };
            let compact = value.to_string();
            valid += 1;
            let found: Vec<_> = reference_values(&compact).collect();
            assert_eq!(found, references_walked(&compact), "{compact}");
        }
    }
    assert!(
        valid > 1_000,
        "the generator must also make valid JSON ({valid})"
    );
}

#[test]
fn values_write_as_serde_json_writes_them() {
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    let long = "x".repeat(15);
    let seeds = [
        r#"{"resourceType":"Patient","a":[1,-2,2.50,1e-25,18446744073709551615,{"b":"c\"d\\"}],"e":"urn:uuid:1","f":"é😀","g":null,"h":true,"i":false}"#.to_string(),
        // Escapes on either side of a 16-byte chunk's edge.
        format!(r#"{{"s":"{long}\n{long}\t","t":"{long}{long}\u0001","u":"\u007f{long}\\"}}"#),
    ];
    let mut valid = 0;
    for seed in &seeds {
        for _ in 0..10_000 {
            let text = garble(seed, &mut rng);
            let Ok(value) = serde_json::from_str::<serde_json::Value>(&text) else {
                continue;
            };
            valid += 1;
            let mut ours = Vec::new();
            write_value(&mut ours, &value);
            assert_eq!(
                String::from_utf8(ours).unwrap(),
                serde_json::to_string(&value).unwrap(),
                "{text}"
            );
        }
    }
    assert!(
        valid > 1_000,
        "the generator must also make valid JSON ({valid})"
    );
}
