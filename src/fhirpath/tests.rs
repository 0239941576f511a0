//! Tests: the FHIR R4 core and local profile invariants the validator runs, routing rules,
//! FHIRPath spec examples, parse errors, and robustness (fuzzing, deep nesting).

use super::{Env, Expression, Item};
use serde_json::{Value, json};

fn expr(src: &str) -> Expression {
    match Expression::parse(src) {
        Ok(e) => e,
        Err(e) => panic!("{src}: {e}"),
    }
}

/// Invariant result with the focus as the whole resource.
fn sat(src: &str, focus: &Value) -> bool {
    sat_in(src, focus, focus)
}

fn sat_in(src: &str, focus: &Value, resource: &Value) -> bool {
    let env = Env {
        focus,
        focus_type: None,
        resource,
        root: resource,
        vars: &[],
        unbound: None,
    };
    match expr(src).is_satisfied(&env) {
        Ok(b) => b,
        Err(e) => panic!("{src}: {e}"),
    }
}

fn eval<'a>(src: &str, focus: &'a Value) -> Vec<Item<'a>> {
    match expr(src).evaluate(&Env::new(focus)) {
        Ok(v) => v,
        Err(e) => panic!("{src}: {e}"),
    }
}

/// Evaluates a closed expression (no data) and renders it for compact assertions.
fn show(src: &str) -> String {
    let null = Value::Null;
    let items = eval(src, &null);
    let parts: Vec<String> = items
        .iter()
        .map(|it| match it {
            Item::Boolean(b) => b.to_string(),
            Item::Integer(i) => i.to_string(),
            Item::Decimal(d) => d.to_string(),
            Item::String(s) => format!("'{s}'"),
            Item::Node { value, .. } => value.to_string(),
            Item::Date(t) | Item::DateTime(t) | Item::Time(t) => format!("@{t}"),
            Item::Quantity { value, unit } => format!("{value} '{unit}'"),
        })
        .collect();
    parts.join(", ")
}

fn patient() -> Value {
    json!({
        "resourceType": "Patient", "id": "p1", "active": true, "birthDate": "1974-12-25",
        "deceasedBoolean": false,
        "identifier": [
            {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9434765919"},
            {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "RJ1"}
        ],
        "name": [
            {"use": "official", "family": "Chalmers", "given": ["Peter", "James"]},
            {"use": "usual", "given": ["Jim"]}
        ],
        "telecom": [{"system": "phone", "value": "(03) 5555 6473", "use": "work", "rank": 1}],
        "contained": [{"resourceType": "Organization", "id": "org1"}],
        "managingOrganization": {"reference": "#org1"}
    })
}

#[test]
fn ext_1() {
    let e = "extension.exists() != value.exists()";
    assert!(sat(e, &json!({"url": "u", "valueString": "x"})));
    assert!(sat(
        e,
        &json!({"url": "u", "extension": [{"url": "a", "valueCode": "c"}]})
    ));
    assert!(!sat(e, &json!({"url": "u"})));
    assert!(!sat(
        e,
        &json!({"url": "u", "valueBoolean": true, "extension": [{"url": "a"}]})
    ));
}

#[test]
fn per_1() {
    let e = "start.hasValue().not() or end.hasValue().not() or (start <= end)";
    let p = |s: &str, e2: &str| json!({"start": s, "end": e2});
    assert!(sat(e, &json!({"start": "2020-01-01"})));
    assert!(sat(e, &p("2020-01-01", "2020-01-02T10:00:00Z")));
    assert!(!sat(e, &p("2020-01-03", "2020-01-02T10:00:00Z")));
    // 01:10-01:00 is 02:10Z, after 01:30Z.
    assert!(sat(
        e,
        &p("2020-03-29T01:30:00+00:00", "2020-03-29T01:10:00-01:00")
    ));
    assert!(!sat(
        e,
        &p("2020-03-29T01:10:00-01:00", "2020-03-29T01:30:00+00:00")
    ));
    assert!(sat(
        e,
        &p("2020-03-29T10:00:00.5Z", "2020-03-29T10:00:00.500Z")
    ));
    // Undecidable at the common precision => empty => satisfied.
    assert!(sat(e, &p("2020-03", "2020-03-15")));
    assert!(sat(e, &p("2020-03-15T10:00:00Z", "2020-03-15")));
    assert!(!sat(e, &p("2020-04", "2020-03-15")));
    assert!(!sat(e, &p("2021", "2020-03-15")));
}

#[test]
fn pat_1_cpl_3_prr_1_qty_3_cpt_2_att_1() {
    let pat1 = "name.exists() or telecom.exists() or address.exists() or organization.exists()";
    assert!(sat(pat1, &json!({"name": {"family": "X"}})));
    assert!(sat(
        pat1,
        &json!({"organization": {"reference": "Organization/1"}})
    ));
    assert!(!sat(pat1, &json!({"relationship": [{"text": "x"}]})));
    let cpl3 = "detail.empty() or reference.empty()";
    assert!(sat(cpl3, &json!({"detail": {"status": "x"}})));
    assert!(!sat(
        cpl3,
        &json!({"detail": {"status": "x"}, "reference": {"reference": "x"}})
    ));
    let sr = |v: Value| sat("orderDetail.empty() or code.exists()", &v);
    assert!(sr(
        json!({"resourceType": "ServiceRequest", "code": {"text": "x"}, "orderDetail": [{}]})
    ));
    assert!(!sr(
        json!({"resourceType": "ServiceRequest", "orderDetail": [{"text": "x"}]})
    ));
    assert!(sat(
        "code.empty() or system.exists()",
        &json!({"value": 1, "code": "mg", "system": "u"})
    ));
    assert!(!sat(
        "code.empty() or system.exists()",
        &json!({"value": 1, "code": "mg"})
    ));
    assert!(sat(
        "value.empty() or system.exists()",
        &json!({"use": "home"})
    ));
    assert!(!sat(
        "value.empty() or system.exists()",
        &json!({"value": "0123"})
    ));
    assert!(!sat(
        "data.empty() or contentType.exists()",
        &json!({"data": "aGk="})
    ));
    assert!(sat(
        "data.empty() or contentType.exists()",
        &json!({"data": "aGk=", "contentType": "text/plain"})
    ));
}

#[test]
fn rng_2_and_rat_1() {
    let e = "low.empty() or high.empty() or (low <= high)";
    let q = |v: f64, code: &str| json!({"value": v, "unit": code, "system": "http://unitsofmeasure.org", "code": code});
    assert!(sat(e, &json!({"low": q(1.0, "mg"), "high": q(2.5, "mg")})));
    assert!(!sat(e, &json!({"low": q(3.0, "mg"), "high": q(2.5, "mg")})));
    assert!(
        sat(e, &json!({"low": q(3.0, "mg"), "high": q(2.5, "g")})),
        "different units: empty"
    );
    assert!(sat(e, &json!({"low": {"value": 1}, "high": {"value": 2}})));
    assert!(sat(e, &json!({"high": q(2.5, "mg")})));
    let rat = "(numerator.empty() xor denominator.exists()) and (numerator.exists() or extension.exists())";
    assert!(sat(
        rat,
        &json!({"numerator": {"value": 1}, "denominator": {"value": 2}})
    ));
    assert!(!sat(rat, &json!({"numerator": {"value": 1}})));
    assert!(!sat(rat, &json!({})));
    assert!(sat(rat, &json!({"extension": [{"url": "x"}]})));
}

#[test]
fn ref_1_contained_references() {
    let e = "reference.startsWith('#').not() or (reference.substring(1).trace('url') in %rootResource.contained.id.trace('ids'))";
    let pat = patient();
    let good = &pat["managingOrganization"];
    assert!(sat_in(e, good, &pat));
    assert!(!sat_in(e, &json!({"reference": "#nope"}), &pat));
    assert!(sat_in(e, &json!({"reference": "Organization/1"}), &pat));
    assert!(sat_in(e, &json!({"display": "no reference"}), &pat));
}

#[test]
fn tim_9_tim_3() {
    let e = "offset.empty() or (when.exists() and ((when in ('C' | 'CM' | 'CD' | 'CV')).not()))";
    assert!(sat(e, &json!({"frequency": 1})));
    assert!(sat(e, &json!({"offset": 30, "when": ["ACM"]})));
    assert!(!sat(e, &json!({"offset": 30, "when": ["CM"]})));
    assert!(!sat(e, &json!({"offset": 30})));
    let t3 = "duration.exists() implies duration >= 0";
    assert!(sat(t3, &json!({"duration": 1.5})));
    assert!(sat(t3, &json!({"period": 1})));
    assert!(!sat(t3, &json!({"duration": -2})));
}

#[test]
fn dom_2_dom_4() {
    let mut pat = patient();
    assert!(sat("contained.contained.empty()", &pat));
    assert!(sat(
        "contained.meta.versionId.empty() and contained.meta.lastUpdated.empty()",
        &pat
    ));
    pat["contained"][0]["contained"] = json!([{"resourceType": "Patient"}]);
    pat["contained"][0]["meta"] = json!({"versionId": "2"});
    assert!(!sat("contained.contained.empty()", &pat));
    assert!(!sat(
        "contained.meta.versionId.empty() and contained.meta.lastUpdated.empty()",
        &pat
    ));
}

#[test]
fn profile_invariants() {
    let cp = "status = 'active' implies period.start.exists()";
    assert!(sat(
        cp,
        &json!({"resourceType": "CarePlan", "status": "active", "period": {"start": "2020"}})
    ));
    assert!(sat(
        cp,
        &json!({"resourceType": "CarePlan", "status": "draft"})
    ));
    assert!(!sat(
        cp,
        &json!({"resourceType": "CarePlan", "status": "active"})
    ));
    let sr = "status = 'completed' implies (occurrence.ofType(dateTime).exists() or occurrence.ofType(Period).end.exists())";
    let s = |v: Value| sat(sr, &v);
    assert!(s(
        json!({"status": "completed", "occurrenceDateTime": "2020-01-01T10:00:00Z"})
    ));
    assert!(s(
        json!({"status": "completed", "occurrencePeriod": {"start": "2020", "end": "2021"}})
    ));
    assert!(!s(
        json!({"status": "completed", "occurrencePeriod": {"start": "2020"}})
    ));
    assert!(!s(
        json!({"status": "completed", "occurrenceTiming": {"event": ["2020"]}})
    ));
    assert!(!s(json!({"status": "completed"})));
    assert!(s(json!({"status": "active"})));
}

const NHS: &str = "$this.matches('^[0-9]{10}$') and ((11 - (($this.substring(0,1).toInteger() * 10 + $this.substring(1,1).toInteger() * 9 + $this.substring(2,1).toInteger() * 8 + $this.substring(3,1).toInteger() * 7 + $this.substring(4,1).toInteger() * 6 + $this.substring(5,1).toInteger() * 5 + $this.substring(6,1).toInteger() * 4 + $this.substring(7,1).toInteger() * 3 + $this.substring(8,1).toInteger() * 2) mod 11)) mod 11) = $this.substring(9,1).toInteger()";

fn nhs_ok(number: &str) -> bool {
    sat(NHS, &json!(number))
}

#[test]
fn nhs_number_modulus_11() {
    for good in ["9434765919", "4000000020", "4444444444", "9990000018"] {
        assert!(nhs_ok(good), "{good}");
    }
    // Digit 9 weight 2 * 6 = 12 => remainder 1 => check digit 10: never valid.
    for bad in [
        "9434765918",
        "943476591",
        "94347659190",
        "abcdefghij",
        "0000000060",
        "0000000069",
        "943476591x",
    ] {
        assert!(!nhs_ok(bad), "{bad}");
    }
    // Cross-check against a direct implementation on pseudo-random numbers.
    let mut seed: u64 = 42;
    for _ in 0..300 {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let n = format!("{:010}", (seed >> 20) % 10_000_000_000);
        let d: Vec<u32> = n.bytes().map(|b| u32::from(b - b'0')).collect();
        let r = (0..9).map(|i| d[i] * (10 - i as u32)).sum::<u32>() % 11;
        let expected = (11 - r) % 11 == d[9];
        assert_eq!(nhs_ok(&n), expected, "{n}");
    }
}

#[test]
fn ods_code() {
    let e = "identifier.where(system = 'https://fhir.nhs.uk/Id/ods-organization-code').all(value.matches('^[A-Z0-9]{3,10}$'))";
    assert!(sat(e, &patient()));
    let org = |v: &str| json!({"identifier": [{"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": v}]});
    assert!(sat(e, &org("RRF12")));
    assert!(!sat(e, &org("rj1")));
    assert!(!sat(e, &org("AB")));
    assert!(!sat(e, &org("ABCDEFGHIJK")));
    assert!(sat(
        e,
        &json!({"identifier": [{"system": "other", "value": "x"}]})
    ));
}

#[test]
fn routing_expressions() {
    let enc = json!({"resourceType": "Encounter", "status": "in-progress", "class": {"code": "EMER"},
        "subject": {"reference": "Patient/123"}, "period": {"start": "2024-05-01T09:00:00Z"}});
    assert!(sat(
        "Encounter.class.code = 'EMER' and status in ('in-progress' | 'finished')",
        &enc
    ));
    assert!(!sat(
        "Encounter.class.code = 'AMB' and status in ('in-progress' | 'finished')",
        &enc
    ));
    assert!(sat("subject.reference.startsWith('Patient/')", &enc));
    assert_eq!(
        eval("iif(period.start.exists(), period.start, 'none')", &enc)[0],
        Item::Node {
            value: &enc["period"]["start"],
            type_name: None
        }
    );
    assert!(sat(
        "iif(period.end.exists(), period.end, 'none') = 'none'",
        &enc
    ));
    let sr = json!({"resourceType": "ServiceRequest", "code": {"coding": [
        {"system": "http://snomed.info/sct", "code": "1"},
        {"system": "https://fhir.onebromley.nhs.uk/CodeSystem/pathway-referral", "code": "at-home-ivs"}]}});
    let route = "code.coding.where(system = 'https://fhir.onebromley.nhs.uk/CodeSystem/pathway-referral').code.startsWith('at-home-')";
    assert!(sat(route, &sr));
    let pat = patient();
    assert_eq!(
        eval("name.given.first() & ' ' & name.family", &pat),
        vec![Item::String("Peter Chalmers".into())]
    );
    assert!(sat("birthDate <= @2000-01-01", &pat));
    assert!(!sat("birthDate > @2000-01-01", &pat));
    assert!(!sat("Patient.birthDate < @1974-12-25", &pat));
}

#[test]
fn spec_examples() {
    let pat = patient();
    let names = eval("Patient.name.given", &pat);
    assert_eq!(names.len(), 3);
    assert!(eval("Observation.status", &pat).is_empty());
    assert!(sat(
        "name.where(use = 'official').given.first() = 'Peter'",
        &pat
    ));
    assert!(sat(
        "name.given.count() = 3 and name.given.distinct().count() = 3",
        &pat
    ));
    assert!(sat(
        "telecom.where(use = 'work').value.exists() and name[1].given = 'Jim'",
        &pat
    ));
    assert!(sat(
        "deceased.ofType(boolean) = false and deceased is boolean and (deceased as Boolean).not()",
        &pat
    ));
    assert!(sat(
        "identifier.select(system).count() = 2 and name.select(given).count() = 3",
        &pat
    ));
    assert!(sat(
        "descendants().where($this = 'Jim').exists() and children().count() > 5",
        &pat
    ));
    assert!(sat(
        "contained.ofType(Organization).id = 'org1' and contained.first() is Organization",
        &pat
    ));
    for (e, want) in [
        ("(1 | 2 | 2 | 3).count()", "3"),
        ("(1 | 2).combine(2).count()", "3"),
        (
            "7 div 2 = 3 and 7 mod 2 = 1 and 7 / 2 = 3.5 and -7 div 2 = -3",
            "true",
        ),
        ("1 / 0", ""),
        ("9223372036854775807 + 1", ""),
        ("5.5 div 0.7", "7"),
        ("1.50 = 1.5 and 1 = 1.0 and 2 > 1.5", "true"),
        ("{}.empty() and {}.count() = 0", "true"),
        ("true and {}", ""),
        ("false and {}", "false"),
        ("{} or true", "true"),
        ("{} implies false", ""),
        ("false implies {}", "true"),
        ("true xor false", "true"),
        ("{} = 1", ""),
        ("'John  Smith' ~ 'john smith' and {} ~ {}", "true"),
        ("'a' !~ 'A'", "false"),
        ("@2012 = @2012-01", ""),
        (
            "@2012-01-01 < @2012-01-02T10:00 and @T10:00 < @T10:30:00",
            "true",
        ),
        ("@2020-01-01T10:00:00+01:00 = @2020-01-01T09:00:00Z", "true"),
        (
            "'2020-01-01T10:00:00Z' = '2020-01-01T10:00:00+00:00' and '2020-01' != '2020-02'",
            "true",
        ),
        (
            "'abc'.substring(1, 1) & 'abc'.substring(1) & 'abc'.substring(5)",
            "'bbc'",
        ),
        ("'abcdef'.indexOf('cd') + 'abc'.length()", "5"),
        (
            "'a,b'.split(',').join('|') + ' ' + 'XyZ'.lower() + 'q'.upper()",
            "'a|b xyzQ'",
        ),
        ("'  hi  '.trim() + 'aXbX'.replace('X', '-')", "'hia-b-'"),
        ("'abc'.toChars().count()", "3"),
        (
            "'abc'.matches('b') and 'abc'.matches('^b').not() and 'x1'.matches('^\\\\w\\\\d$')",
            "true",
        ),
        ("'2019-02-03'.matches('^\\\\d{4}(-\\\\d{2}){0,2}$')", "true"),
        (
            "'ab'.matches('^(a|b)+$') and 'abc'.matches('^(?:a|b)+$').not() and 'ab'.matches('[^a]')",
            "true",
        ),
        (
            "'12'.toInteger() + '1.5'.toDecimal() + true.toInteger()",
            "14.5",
        ),
        (
            "'1e5'.convertsToDecimal() or 'x'.convertsToInteger() or 'yes'.toBoolean().not()",
            "false",
        ),
        (
            "'2020-01-02'.toDate() = @2020-01-02 and '2020-01-02T10:00:00Z'.convertsToDateTime()",
            "true",
        ),
        (
            "3.toString() + 2.5.toString() + true.toString()",
            "'32.5true'",
        ),
        ("(1 | 2 | 3).where($this > 1).select($this * 10)", "20, 30"),
        (
            "(1 | 2 | 3).all($this > 0) and (1 | 2).exists($this = 2) and (true | false).anyTrue()",
            "true",
        ),
        (
            "(true | true).allTrue() and (false).allFalse() and (true).anyFalse().not()",
            "true",
        ),
        (
            "(1 | 2 | 3).tail().first() + (1 | 2 | 3).last() + (1 | 2 | 3).skip(1).take(1).single()",
            "7",
        ),
        ("(1 | 2).intersect(2 | 3) | (1 | 2).exclude(2)", "2, 1"),
        (
            "(1 | 2).subsetOf(1 | 2 | 3) and (1 | 2 | 3).supersetOf(3) and 1.combine(1).isDistinct().not()",
            "true",
        ),
        ("(1 | 2 | 3)[1] + (4)[0]", "6"),
        ("(1 | 2 | 3).select($index)", "0, 1, 2"),
        (
            "1 in (1 | 2) and ((1 | 2) contains 3) = false and ('bc' in {}) = false",
            "true",
        ),
        ("'a' & {} & 'b' & 1", "'ab1'"),
        ("iif(false, 1) | iif({}, 1, 2)", "2"),
        ("4 'mg' < 5 'mg' and 3 days = 3 days", "true"),
        ("%ucum + %`vs-foo`", "'http://unitsofmeasure.orgvs-foo'"),
        (
            "today() > @2024-01-01 and now() > @2024-01-01T00:00:00Z",
            "true",
        ),
        (
            "`div`.empty() and 1.is(Integer) and 1.5 is System.Decimal and 'a'.as(String) = 'a'",
            "true",
        ),
        ("/* c */ 1 + 2 // trailing", "3"),
        ("-(2 * 3) + - 1", "-7"),
        ("'\\u0041\\n'.length() = 2 and '\\'' = '\\u0027'", "true"),
    ] {
        let got = show(e);
        assert_eq!(got, want, "{e}");
    }
}

#[test]
fn repeat_and_is_satisfied_errors() {
    let q = json!({"item": [{"linkId": "1", "item": [{"linkId": "1.1"}, {"linkId": "1.2", "item": [{"linkId": "1.2.1"}]}]}]});
    assert_eq!(eval("repeat(item).linkId", &q).len(), 4);
    let pat = patient();
    let env = Env::new(&pat);
    assert!(expr("name").is_satisfied(&env).is_err());
    assert!(expr("name.given.first() + 1").evaluate(&env).is_err());
    assert!(expr("name.given < 1").evaluate(&env).is_err());
    assert!(expr("(1 | 2).not()").evaluate(&env).is_err());
    assert_eq!(expr("active").is_satisfied(&env), Ok(true));
    assert_eq!(expr("birthDate").source(), "birthDate");
    let typed = Env {
        focus: &pat["name"][0],
        focus_type: Some("HumanName"),
        resource: &pat,
        root: &pat,
        vars: &[],
        unbound: None,
    };
    assert_eq!(
        expr("$this is HumanName and %resource.id = 'p1' and %context.family = 'Chalmers'")
            .is_satisfied(&typed),
        Ok(true)
    );
}

#[test]
fn expression_is_shareable() {
    fn check<T: Clone + Send + Sync + std::fmt::Debug + 'static>(_: &T) {}
    check(&expr("name.given"));
}

#[test]
fn parse_errors() {
    let err = |s: &str| match Expression::parse(s) {
        Ok(_) => panic!("{s} should not parse"),
        Err(e) => e,
    };
    assert_eq!(err("name.given(").offset, 11);
    assert_eq!(err("1 +").offset, 3);
    let foo = err("foo()");
    assert_eq!(
        (foo.offset, foo.message.as_str()),
        (0, "unsupported FHIRPath function foo()")
    );
    assert_eq!(
        err("name.foo(1)").to_string(),
        "at offset 5: unsupported FHIRPath function foo()"
    );
    assert_eq!(err("a.where()").offset, 2);
    for bad in [
        "'x'.matches('[a-')",
        "'x'.matches('a{2,1}')",
        "'x'.matches('\\\\p')",
        "'unterminated",
        "1 2",
        "@2020-13-01",
        "%unknown",
        "$total",
        "a.",
        "(1",
        "'\\q'",
        "a[1",
        "a is",
        "99999999999999999999",
        "'x'.matches('(?=a)')",
        "#",
    ] {
        err(bad);
    }
}

#[test]
fn deep_nesting_is_a_parse_error() {
    let deep = format!("{}1{}", "(".repeat(10_000), ")".repeat(10_000));
    assert!(Expression::parse(&deep).is_err());
    for piece in ["a.", "-", "1 + ", "1 | ", "f(", "a["] {
        assert!(
            Expression::parse(&format!("{}a", piece.repeat(10_000))).is_err(),
            "{piece}"
        );
    }
    let regex = format!("'a'.matches('{}a{}')", "(".repeat(5_000), ")".repeat(5_000));
    assert!(Expression::parse(&regex).is_err());
    assert!(Expression::parse("'a'.matches('((a{1000}){1000}){1000}')").is_err());
    // Moderately deep expressions still work.
    let ok = format!("{}true{}", "(".repeat(30), ")".repeat(30));
    assert!(sat(&ok, &Value::Null));
    let chain = vec!["true"; 100].join(" and ");
    assert!(sat(&chain, &Value::Null));
    // The deepest accepted trees must evaluate on a default 2 MiB test thread in debug builds.
    let calls = format!("'1'{} = '1'", ".toInteger().toString()".repeat(63));
    assert!(sat(&calls, &Value::Null));
    let sum = format!("{} = 127", vec!["1"; 127].join(" + "));
    assert!(sat(&sum, &Value::Null));
    assert!(Expression::parse(&format!("{} = 128", vec!["1"; 128].join(" + "))).is_err());
    let lambdas = format!("{}true{}", "1.where(".repeat(62), ")".repeat(62));
    assert_eq!(eval(&lambdas, &Value::Null), vec![Item::Integer(1)]);
}

/// Tiny LCG so the fuzz test is reproducible without a crate.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) as usize % n
    }

    fn pick<'t>(&mut self, from: &[&'t str]) -> &'t str {
        from[self.next(from.len())]
    }

    /// A mostly well-formed random expression.
    fn expr(&mut self, depth: u32, out: &mut String) {
        const ATOMS: &[&str] = &[
            "name",
            "given",
            "family",
            "Patient",
            "identifier",
            "value",
            "birthDate",
            "telecom",
            "0",
            "1",
            "2.5",
            "'a'",
            "'2020-01-01'",
            "@2020",
            "@2020-01-01T10:00Z",
            "@T10:00",
            "$this",
            "$index",
            "%resource",
            "%context",
            "{}",
            "3 days",
            "4 'mg'",
            "true",
            "9223372036854775807",
            "'Peter'",
            "deceased",
        ];
        const OPS: &[&str] = &[
            "+", "-", "*", "/", "div", "mod", "&", "|", "=", "!=", "~", "!~", "<", ">=", "and",
            "or", "xor", "implies", "in", "contains",
        ];
        const FUNCS: &[&str] = &[
            "where",
            "select",
            "exists",
            "all",
            "repeat",
            "iif",
            "substring",
            "matches",
            "startsWith",
            "skip",
            "take",
            "union",
            "combine",
            "intersect",
            "exclude",
            "indexOf",
            "split",
            "join",
            "replace",
            "trace",
        ];
        const NULLARY: &[&str] = &[
            "empty",
            "first",
            "last",
            "tail",
            "count",
            "distinct",
            "not",
            "children",
            "descendants",
            "hasValue",
            "toInteger",
            "toString",
            "toDecimal",
            "toBoolean",
            "toDate",
            "length",
            "upper",
            "trim",
            "single",
            "allTrue",
            "anyFalse",
            "isDistinct",
            "toChars",
            "convertsToInteger",
            "today",
            "now",
        ];
        match if depth == 0 { 0 } else { self.next(7) } {
            0 | 1 => out.push_str(self.pick(ATOMS)),
            2 => {
                self.expr(depth - 1, out);
                out.push(' ');
                out.push_str(self.pick(OPS));
                out.push(' ');
                self.expr(depth - 1, out);
            }
            3 => {
                out.push('(');
                self.expr(depth - 1, out);
                out.push(')');
            }
            4 => {
                self.expr(depth - 1, out);
                out.push_str(&format!(".{}()", self.pick(NULLARY)));
            }
            5 => {
                self.expr(depth - 1, out);
                out.push_str(&format!(".{}(", self.pick(FUNCS)));
                for i in 0..=self.next(3) {
                    out.push_str(if i > 0 { ", " } else { "" });
                    self.expr(depth - 1, out);
                }
                out.push(')');
            }
            _ => {
                self.expr(depth - 1, out);
                out.push_str(self.pick(&[
                    " is String",
                    ".ofType(Integer)",
                    "[0]",
                    "[1]",
                    ".as(boolean)",
                    ".given",
                ]));
            }
        }
    }
}

#[test]
fn fuzz_no_panic() {
    let pat = patient();
    let env = Env::new(&pat);
    let mut rng = Lcg(0x9E37_79B9_7F4A_7C15);
    let mut parsed = 0;
    for round in 0..4_000 {
        let mut src = String::new();
        let depth = 1 + rng.next(5) as u32;
        rng.expr(depth, &mut src);
        // Every other round, damage the text so the error paths of the lexer and parser run too.
        if round % 2 == 1 && !src.is_empty() {
            let at = rng.next(src.len());
            if src.is_char_boundary(at) {
                src.insert_str(
                    at,
                    rng.pick(&["(", ")", "'", ".", ",", "[", "@", "%", "`", " and ", "é"]),
                );
            }
        }
        if let Ok(e) = Expression::parse(&src) {
            parsed += 1;
            let _ = e.evaluate(&env);
            let _ = e.is_satisfied(&env);
        }
    }
    assert!(parsed > 1_000, "only {parsed} parsed");
    // Token soup: mostly unparseable, which is the point.
    const SOUP: &[&str] = &[
        "name", ".", "(", ")", "[", "]", ",", "'x'", "1", "2.5", "@2020", "@T10", "+", "-", "*",
        "/", "|", "=", "~", "<=", "and", "or", "implies", "is", "as", "where(", "first()", "$this",
        "%context", "{", "}", "`a`",
    ];
    for _ in 0..3_000 {
        let src: Vec<&str> = (0..1 + rng.next(12)).map(|_| rng.pick(SOUP)).collect();
        if let Ok(e) = Expression::parse(&src.join(" ")) {
            let _ = e.evaluate(&env);
        }
    }
    for s in [
        "é",
        "'é",
        "`a",
        "@",
        "%",
        "$",
        "'\\u12",
        "@2020-01-01T10:00:00.",
        "'a'.matches('\\\\')",
    ] {
        let _ = Expression::parse(s);
    }
}

/// Timing in the build profile in use: `cargo test --release -- --ignored --nocapture bench`.
#[test]
#[ignore]
fn bench_invariants() {
    let quantity =
        json!({"value": 5.4, "unit": "mg", "system": "http://unitsofmeasure.org", "code": "mg"});
    let nhs = json!("9434765919");
    for (name, src, focus) in [
        ("qty-3", "code.empty() or system.exists()", &quantity),
        ("nhs", NHS, &nhs),
    ] {
        let (e, env) = (expr(src), Env::new(focus));
        let start = std::time::Instant::now();
        for _ in 0..1_000_000 {
            assert_eq!(
                std::hint::black_box(e.is_satisfied(std::hint::black_box(&env))),
                Ok(true)
            );
        }
        println!(
            "{name}: {:.0} ns/eval",
            start.elapsed().as_nanos() as f64 / 1e6
        );
    }
}

#[test]
fn an_unbound_variable_is_reported_only_when_it_is_read() {
    let when = Expression::parse_with(
        "status = 'finished' and %age >= 65 and %careHome.empty()",
        &["age", "careHome"],
    )
    .unwrap();
    let unbound = std::cell::Cell::new(false);
    let open = json!({"resourceType": "Encounter", "status": "in-progress"});
    let env = Env {
        unbound: Some(&unbound),
        ..Env::new(&open)
    };
    assert_eq!(when.evaluate(&env).unwrap(), vec![Item::Boolean(false)]);
    assert!(!unbound.get(), "the left side decided alone");
    let finished = json!({"resourceType": "Encounter", "status": "finished"});
    let env = Env {
        unbound: Some(&unbound),
        ..Env::new(&finished)
    };
    when.evaluate(&env).unwrap();
    assert!(unbound.get(), "%age was read and not bound");
    // Bound, it is not reported.
    unbound.set(false);
    let (age, home) = (json!(80), Value::Null);
    let vars = [("age", &age), ("careHome", &home)];
    let env = Env {
        vars: &vars,
        unbound: Some(&unbound),
        ..Env::new(&finished)
    };
    assert_eq!(when.evaluate(&env).unwrap(), vec![Item::Boolean(true)]);
    assert!(!unbound.get());
}
