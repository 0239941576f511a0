//! A cohort simulator: realistic feeds for a made-up population whose true
//! outcome figures are known by construction, for tests and demos.
//!
//! It writes what the gateway's users send: a GP risk list (generic
//! layout), the MDT assessments (CarePlans turning active), HL7 v2 ADT
//! messages (ED attendances, admissions, discharges), pathway ServiceRequests
//! (Bromley @Home referrals, care-home assessments and reviews), a
//! care-home register and an opt-out list. Beside the events that count it
//! adds noise that must not: events just outside the windows, elective and
//! outpatient encounters, cancelled attendances, patients assessed less than
//! N weeks before the report date or not at all, and patients with a
//! national data opt-out.
//!
//! Dates are relative to `today` (the day the GP list is sent, which is its
//! referrals' `authoredOn`): the report date is `today + 200 days`.

use jiff::ToSpan;
use jiff::civil::Date;

/// A pathway ServiceRequest to send (the subject is found by NHS number).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub nhs_number: String,
    pub code: &'static str,
    pub status: &'static str,
    pub authored: Date,
    pub done_on: Option<Date>,
}

/// The true figures, counted while generating.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expected {
    pub referrals: usize,
    pub cohort: usize,
    pub ed_before: i64,
    pub ed_after: i64,
    pub nel_before: i64,
    pub nel_after: i64,
    pub at_home_referrals: usize,
    pub at_home_admitted: usize,
    pub residents: usize,
    pub admission_assessed: usize,
    pub assessed_last_6_months: usize,
    pub medicines_reviewed_last_12_months: usize,
    pub discharges: usize,
    pub discharges_reviewed: usize,
    pub opted_out: usize,
}

#[derive(Debug, Clone)]
pub struct Cohort {
    pub today: Date,
    pub as_of: Date,
    pub window_weeks: i64,
    pub practice: String,
    /// The GP risk list (CSV, generic layout).
    pub gp_list: String,
    /// `ods_code,name,postcode`
    pub register: String,
    /// NHS numbers for the configured opt-out file.
    pub opt_out_file: Vec<String>,
    /// NHS numbers whose Patient gets the opt-out extension.
    pub opt_out_flag: Vec<String>,
    /// MDT assessments: NHS number, assessment date.
    pub assessments: Vec<(String, Date)>,
    /// HL7 v2 ADT messages, in sending order.
    pub adt: Vec<String>,
    pub requests: Vec<Request>,
    pub expected: Expected,
}

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// The `n`th NHS number of the simulator's range (999 1xx xxxx, Modulus 11
/// right; numbers whose check value would be 10 are skipped).
pub fn nhs_number(n: usize) -> String {
    let mut stem = 991_000_000 + n as u64 * 2;
    loop {
        let digits = format!("{stem:09}");
        let sum: u64 = digits
            .bytes()
            .enumerate()
            .map(|(i, b)| u64::from(b - b'0') * (10 - i as u64))
            .sum();
        let check = (11 - sum % 11) % 11;
        if check < 10 {
            return format!("{digits}{check}");
        }
        stem += 1;
    }
}

const HOMES: &[(&str, &str, &str)] = &[
    ("VM101", "Elm House", "BR1 1AA"),
    ("VM102", "Oak Lodge", "BR3 4BB"),
    ("VM103", "Willow Court", "BR6 7CC"),
];

struct Builder {
    cohort: Cohort,
    rng: Rng,
    message: usize,
    visit: usize,
}

impl Builder {
    fn day(&self, offset: i64) -> Date {
        self.cohort
            .today
            .checked_add(offset.days())
            .unwrap_or(self.cohort.today)
    }

    fn patient(&mut self, n: usize, family: &str, postcode: &str, severe: bool) -> String {
        let nhs = nhs_number(n);
        let (score, category) = if severe {
            ("0.47", "severe")
        } else {
            ("0.22", "mild")
        };
        self.cohort.gp_list.push_str(&format!(
            "{nhs},{family},Ann,1938-03-05,female,{postcode},{score},{category}\n"
        ));
        nhs
    }

    /// An encounter: `class` E (ED) or I (inpatient), PV1-4 admission type,
    /// starting on `date` at 10:00 London; discharged `stay` days later when
    /// `Some`; `to` is PV1-36.
    fn visit(
        &mut self,
        nhs: &str,
        class: &str,
        kind: &str,
        date: Date,
        stay: Option<i64>,
        to: &str,
    ) -> String {
        self.visit += 1;
        let visit = format!("S{:06}", self.visit);
        let start = ts(date, 10);
        let begin = if class == "E" { "A04" } else { "A01" };
        self.adt(
            begin,
            nhs,
            &start,
            &pv1(class, kind, &visit, to, &start, None),
        );
        if let Some(days) = stay {
            let end_date = date.checked_add(days.days()).unwrap_or(date);
            let end = ts(end_date, 15);
            self.adt(
                "A03",
                nhs,
                &end,
                &pv1(class, kind, &visit, to, &start, Some(&end)),
            );
        }
        visit
    }

    /// An ED attendance on `date` at 10:00 London, admitted (non-elective,
    /// admission method 21) under its visit number at 14:00 and discharged
    /// `stay` days later: one encounter, two contacts.
    fn attendance_admitted(&mut self, nhs: &str, date: Date, stay: i64) {
        self.visit += 1;
        let visit = format!("S{:06}", self.visit);
        let (arrived, admitted) = (ts(date, 10), ts(date, 14));
        let end = ts(date.checked_add(stay.days()).unwrap_or(date), 15);
        self.adt(
            "A04",
            nhs,
            &arrived,
            &pv1("E", "A", &visit, "", &arrived, None),
        );
        self.adt(
            "A01",
            nhs,
            &admitted,
            &pv1("I", "21", &visit, "", &admitted, None),
        );
        self.adt(
            "A03",
            nhs,
            &end,
            &pv1("I", "21", &visit, "", &admitted, Some(&end)),
        );
    }

    fn adt(&mut self, event: &str, nhs: &str, when: &str, pv1: &str) {
        self.message += 1;
        let id = format!("SIM{:07}", self.message);
        self.cohort.adt.push(format!(
            "MSH|^~\\&|PAS|RJZ|PATHWAY|ONEBROMLEY|{when}||ADT^{event}^ADT_A01|{id}|P|2.4|||AL|NE|GBR\r\
             EVN|{event}|{when}\r\
             PID|1||H{nhs}^^^RJZ^MR~{nhs}^^^NHS^NH||SIM^Ann||19380305|F\r\
             {pv1}\r"
        ));
    }

    fn request(
        &mut self,
        nhs: &str,
        code: &'static str,
        status: &'static str,
        authored: Date,
        done_on: Option<Date>,
    ) {
        self.cohort.requests.push(Request {
            nhs_number: nhs.to_string(),
            code,
            status,
            authored,
            done_on,
        });
    }
}

/// `YYYYMMDDHH00` local time.
fn ts(date: Date, hour: u8) -> String {
    format!("{}{:02}00", date.strftime("%Y%m%d"), hour)
}

fn pv1(class: &str, kind: &str, visit: &str, to: &str, start: &str, end: Option<&str>) -> String {
    let mut fields = vec![String::new(); 46];
    fields[1] = "1".into();
    fields[2] = class.into();
    fields[3] = if class == "E" {
        "ED^^MAJORS^RJZ30".into()
    } else {
        "WARD 5^^BED 2^RJZ30".into()
    };
    fields[4] = kind.into();
    fields[19] = format!("{visit}^^^RJZ^VN");
    if end.is_some() {
        fields[36] = to.into();
    }
    fields[44] = start.into();
    fields[45] = end.unwrap_or("").into();
    format!(
        "PV1{}",
        fields[1..]
            .iter()
            .map(|f| format!("|{f}"))
            .collect::<String>()
    )
}

/// A cohort of `size` pathway patients (at least 10), plus @Home and
/// care-home patients in proportion, sent on `today`.
pub fn generate(today: Date, size: usize, seed: u64) -> Cohort {
    let window_weeks = 13;
    let window = 7 * window_weeks;
    let mut b = Builder {
        cohort: Cohort {
            today,
            as_of: today.checked_add(200.days()).unwrap_or(today),
            window_weeks,
            practice: "G84001".into(),
            gp_list: "nhs_number,family_name,given_names,birth_date,gender,postcode,efi_score,efi_category\n".into(),
            register: "ods_code,name,postcode\n".into(),
            opt_out_file: Vec::new(),
            opt_out_flag: Vec::new(),
            assessments: Vec::new(),
            adt: Vec::new(),
            requests: Vec::new(),
            expected: Expected::default(),
        },
        rng: Rng(seed | 1),
        message: 0,
        visit: 0,
    };
    for (ods, name, postcode) in HOMES {
        b.cohort
            .register
            .push_str(&format!("{ods},{name},{postcode}\n"));
    }
    let size = size.max(10);
    let mut n = 0;
    let mut next = || {
        n += 1;
        n
    };

    // Proactive care. Assessments fall 10–100 days after today; the cohort is
    // everyone assessed at least 13 weeks before as_of (today + 200).
    for i in 0..size {
        let family = format!("Pathway{i}");
        let nhs = b.patient(next(), &family, "BR2 9XX", true);
        // Two in ten opt out (one by file, one by flag), one in ten is
        // never assessed, one in ten was assessed too recently.
        let role = i % 10;
        if role == 0 {
            b.cohort.opt_out_file.push(nhs.clone());
        }
        if role == 1 {
            b.cohort.opt_out_flag.push(nhs.clone());
        }
        let opted_out = role <= 1;
        if !opted_out {
            b.cohort.expected.referrals += 1;
        } else {
            b.cohort.expected.opted_out += 1;
        }
        if role == 2 {
            continue; // referred, never assessed: a draft plan
        }
        let recent = role == 3;
        let offset = if recent {
            200 - window + 1 + b.rng.below(20) as i64 // too recent by 1–20 days
        } else {
            10 + b.rng.below(90) as i64
        };
        let assessed = b.day(offset);
        b.cohort.assessments.push((nhs.clone(), assessed));
        let in_cohort = !recent && !opted_out;
        if in_cohort {
            b.cohort.expected.cohort += 1;
        }
        // Fewer contacts after than before, on average, as on the real pathway.
        let count = |b: &mut Builder, most: u64| b.rng.below(most + 1) as i64;
        let (ed_before, ed_after) = (count(&mut b, 3), count(&mut b, 2));
        let (nel_before, nel_after) = (count(&mut b, 2), count(&mut b, 1));
        for k in 0..ed_before {
            let d = assessed
                .checked_sub((1 + b.rng.below(window as u64 - 1) as i64 + k % 2).days())
                .unwrap();
            b.visit(&nhs, "E", "A", d, Some(0), "");
        }
        for _ in 0..ed_after {
            let d = assessed
                .checked_add((b.rng.below(window as u64 - 1) as i64).days())
                .unwrap();
            b.visit(&nhs, "E", "A", d, Some(0), "");
        }
        for _ in 0..nel_before {
            let d = assessed
                .checked_sub((1 + b.rng.below(window as u64 - 5) as i64).days())
                .unwrap();
            b.visit(&nhs, "I", "E", d, Some(2), "");
        }
        for _ in 0..nel_after {
            let d = assessed
                .checked_add((b.rng.below(window as u64 - 5) as i64).days())
                .unwrap();
            b.visit(&nhs, "I", "21", d, Some(3), "");
        }
        if in_cohort {
            let e = &mut b.cohort.expected;
            e.ed_before += ed_before;
            e.ed_after += ed_after;
            e.nel_before += nel_before;
            e.nel_after += nel_after;
        }
        // Edges: every third patient has an ED visit on the assessment day
        // (after) and one exactly 13 weeks before (before).
        if i % 3 == 0 {
            b.visit(&nhs, "E", "A", assessed, Some(0), "");
            let edge = assessed.checked_sub(window.days()).unwrap();
            b.visit(&nhs, "E", "A", edge, Some(0), "");
            if in_cohort {
                b.cohort.expected.ed_after += 1;
                b.cohort.expected.ed_before += 1;
            }
        }
        // Every fourth, an ED attendance after the assessment admitted under
        // its visit number: an ED contact and a non-elective admission.
        if i % 4 == 1 {
            b.attendance_admitted(&nhs, assessed.checked_add(7.days()).unwrap(), 2);
            if in_cohort {
                b.cohort.expected.ed_after += 1;
                b.cohort.expected.nel_after += 1;
            }
        }
        // Noise that never counts: a day outside each window, an elective
        // admission and an outpatient visit inside them, a cancelled attendance.
        let outside_before = assessed.checked_sub((window + 1).days()).unwrap();
        let outside_after = assessed.checked_add(window.days()).unwrap();
        b.visit(&nhs, "E", "A", outside_before, Some(0), "");
        b.visit(&nhs, "E", "A", outside_after, Some(0), "");
        b.visit(
            &nhs,
            "I",
            "C",
            assessed.checked_add(5.days()).unwrap(),
            Some(1),
            "",
        );
        b.visit(
            &nhs,
            "O",
            "",
            assessed.checked_sub(5.days()).unwrap(),
            Some(0),
            "",
        );
        let cancelled = b.visit(
            &nhs,
            "E",
            "A",
            assessed.checked_add(7.days()).unwrap(),
            None,
            "",
        );
        let when = ts(assessed.checked_add(7.days()).unwrap(), 11);
        let start = ts(assessed.checked_add(7.days()).unwrap(), 10);
        b.adt(
            "A11",
            &nhs,
            &when,
            &pv1("E", "A", &cancelled, "", &start, None),
        );
    }

    // Bromley @Home: referrals from 5 to 150 days after today; an emergency
    // admission within 30 days of the referral counts as admitted.
    for i in 0..size / 2 {
        let nhs = b.patient(next(), &format!("AtHome{i}"), "BR5 2YY", false);
        let offset = 5 + b.rng.below(145) as i64;
        let referred = b.day(offset);
        b.request(
            &nhs,
            "at-home-admission-avoidance",
            "active",
            referred,
            None,
        );
        b.cohort.expected.at_home_referrals += 1;
        match i % 4 {
            0 => {
                let d = referred
                    .checked_add((b.rng.below(31) as i64).days())
                    .unwrap();
                b.visit(&nhs, "I", "E", d, Some(2), "");
                b.cohort.expected.at_home_admitted += 1;
            }
            1 => {
                // Day 31: too late. And an elective admission in time.
                b.visit(
                    &nhs,
                    "I",
                    "E",
                    referred.checked_add(31.days()).unwrap(),
                    Some(2),
                    "",
                );
                b.visit(
                    &nhs,
                    "I",
                    "C",
                    referred.checked_add(3.days()).unwrap(),
                    Some(1),
                    "",
                );
            }
            _ => {}
        }
    }

    // Noise: an opted-out patient referred and admitted in time, and a
    // referral entered in error.
    let nhs = b.patient(next(), "AtHomeOptedOut", "BR5 2YY", false);
    b.cohort.opt_out_file.push(nhs.clone());
    b.cohort.expected.opted_out += 1;
    let referred = b.day(20);
    b.request(
        &nhs,
        "at-home-admission-avoidance",
        "active",
        referred,
        None,
    );
    b.visit(
        &nhs,
        "I",
        "E",
        referred.checked_add(3.days()).unwrap(),
        Some(2),
        "",
    );
    let nhs = b.patient(next(), "AtHomeInError", "BR5 2YY", false);
    b.request(
        &nhs,
        "at-home-admission-avoidance",
        "entered-in-error",
        b.day(21),
        None,
    );

    // Care homes: residents by postcode; assessments and reviews at known
    // distances from as_of; discharges with and without a review after.
    let as_of = b.cohort.as_of;
    for i in 0..size / 2 {
        let (_, _, postcode) = HOMES[i % HOMES.len()];
        let nhs = b.patient(next(), &format!("Resident{i}"), postcode, false);
        b.cohort.expected.residents += 1;
        let before_as_of = |days: i64| as_of.checked_sub(days.days()).unwrap();
        if i % 2 == 0 {
            let on = before_as_of(150 + b.rng.below(200) as i64);
            b.request(
                &nhs,
                "care-home-admission-assessment",
                "completed",
                on,
                Some(on),
            );
            b.cohort.expected.admission_assessed += 1;
            if on >= as_of.checked_sub(6.months()).unwrap() {
                b.cohort.expected.assessed_last_6_months += 1;
                continue_periodic(&mut b, &nhs, i, as_of, false);
            } else {
                continue_periodic(&mut b, &nhs, i, as_of, true);
            }
        } else {
            continue_periodic(&mut b, &nhs, i, as_of, true);
        }
        if i % 3 == 0 {
            let on = before_as_of(b.rng.below(300) as i64);
            b.request(
                &nhs,
                "care-home-medicines-review",
                "completed",
                on,
                Some(on),
            );
            b.cohort.expected.medicines_reviewed_last_12_months += 1;
        } else if i % 3 == 1 {
            let on = before_as_of(400);
            b.request(
                &nhs,
                "care-home-medicines-review",
                "completed",
                on,
                Some(on),
            );
        }
        if i % 4 < 2 {
            // A discharge back to the home 20–150 days after today.
            let offset = 20 + b.rng.below(130) as i64;
            let admitted = b.day(offset);
            b.visit(&nhs, "I", "E", admitted, Some(4), "54");
            b.cohort.expected.discharges += 1;
            let discharged = admitted.checked_add(4.days()).unwrap();
            if i % 4 == 0 {
                let on = discharged.checked_add(3.days()).unwrap();
                b.request(
                    &nhs,
                    "care-home-post-discharge-review",
                    "completed",
                    on,
                    Some(on),
                );
                b.cohort.expected.discharges_reviewed += 1;
                b.cohort.expected.medicines_reviewed_last_12_months +=
                    usize::from(i % 3 == 1 || i % 3 == 2);
            }
        }
    }
    // An opted-out resident, assessed and discharged: in no figure.
    let nhs = b.patient(next(), "ResidentOptedOut", HOMES[0].2, false);
    b.cohort.opt_out_flag.push(nhs.clone());
    b.cohort.expected.opted_out += 1;
    let on = as_of.checked_sub(30.days()).unwrap();
    b.request(
        &nhs,
        "care-home-admission-assessment",
        "completed",
        on,
        Some(on),
    );
    b.visit(&nhs, "I", "E", b.day(40), Some(4), "54");
    b.cohort
}

/// A resident's periodic assessment: within 6 months (counts) when `due`
/// says one is due, else an old one (does not).
fn continue_periodic(b: &mut Builder, nhs: &str, i: usize, as_of: Date, due: bool) {
    if !due {
        return;
    }
    if i % 5 < 2 {
        let on = as_of.checked_sub((b.rng.below(170) as i64).days()).unwrap();
        b.request(
            nhs,
            "care-home-periodic-assessment",
            "completed",
            on,
            Some(on),
        );
        b.cohort.expected.assessed_last_6_months += 1;
    } else if i % 5 == 2 {
        let on = as_of.checked_sub(200.days()).unwrap();
        b.request(
            nhs,
            "care-home-periodic-assessment",
            "completed",
            on,
            Some(on),
        );
    }
}

/// Sends a cohort to a running gateway the way its senders would: the risk
/// list (`POST /ingest/gp-risk-list`), opt-out flags and MDT assessments
/// (FHIR `PUT`), requests (FHIR `POST`) and the ADT messages over MLLP.
/// `base` is the gateway's root URL (`http://127.0.0.1:8080`).
pub async fn send(cohort: &Cohort, base: &str, mllp: &str) -> Result<(), String> {
    use serde_json::{Value, json};
    let client = reqwest::Client::new();
    let fhir = format!("{}/fhir", base.trim_end_matches('/'));
    let call = |request: reqwest::RequestBuilder, what: String| async move {
        let response = request
            .send()
            .await
            .map_err(|err| format!("{what}: {err}"))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|err| format!("{what}: {err}"))?;
        if !status.is_success() {
            return Err(format!("{what}: {status}: {text}"));
        }
        serde_json::from_str::<Value>(&text).map_err(|err| format!("{what}: {err}"))
    };
    let report = call(
        client
            .post(format!(
                "{}/ingest/gp-risk-list?practice={}",
                base.trim_end_matches('/'),
                cohort.practice
            ))
            .header("content-type", "text/csv")
            .body(cohort.gp_list.clone()),
        "the risk list".into(),
    )
    .await?;
    if report["rejected"] != 0 {
        return Err(format!("the risk list had rejected rows: {report}"));
    }
    let fhir_json = |r: reqwest::RequestBuilder, body: &Value| {
        r.header("content-type", "application/fhir+json")
            .body(body.to_string())
    };
    let mut patients: std::collections::HashMap<String, String> = Default::default();
    for nhs in cohort
        .opt_out_flag
        .iter()
        .chain(cohort.requests.iter().map(|r| &r.nhs_number))
    {
        if patients.contains_key(nhs) {
            continue;
        }
        let found = call(
            client.get(format!(
                "{fhir}/Patient?identifier=https://fhir.nhs.uk/Id/nhs-number|{nhs}"
            )),
            format!("finding patient {nhs}"),
        )
        .await?;
        let mut patient = found["entry"][0]["resource"].clone();
        let id = patient["id"]
            .as_str()
            .ok_or_else(|| format!("patient {nhs} not found"))?
            .to_string();
        if cohort.opt_out_flag.contains(nhs) {
            patient["extension"] =
                json!([{"url": super::facts::OPT_OUT_URL, "valueBoolean": true}]);
            call(
                fhir_json(client.put(format!("{fhir}/Patient/{id}")), &patient),
                format!("flagging the opt-out of {nhs}"),
            )
            .await?;
        }
        patients.insert(nhs.clone(), id);
    }
    for (nhs, assessed) in &cohort.assessments {
        let found = call(
            client.get(format!(
                "{fhir}/CarePlan?identifier=https://fhir.onebromley.nhs.uk/Id/proactive-care-plan|{nhs}"
            )),
            format!("finding the care plan of {nhs}"),
        )
        .await?;
        let mut plan = found["entry"][0]["resource"].clone();
        let id = plan["id"]
            .as_str()
            .ok_or_else(|| format!("no care plan for {nhs}"))?
            .to_string();
        plan["status"] = json!("active");
        plan["period"] = json!({"start": assessed.to_string()});
        call(
            fhir_json(client.put(format!("{fhir}/CarePlan/{id}")), &plan),
            format!("the assessment of {nhs}"),
        )
        .await?;
    }
    for request in &cohort.requests {
        let pathway = match request.code {
            c if c.starts_with("at-home-") => "bromley-at-home",
            c if c.starts_with("care-home-") => "care-home",
            _ => "proactive-care",
        };
        let mut sr = json!({
            "resourceType": "ServiceRequest",
            "status": request.status,
            "intent": "order",
            "category": [{"coding": [{"system": crate::gp::map::PATHWAY_SYSTEM, "code": pathway}]}],
            "code": {"coding": [{"system": crate::gp::map::REFERRAL_SYSTEM, "code": request.code}]},
            "subject": {"reference": format!("Patient/{}", patients[&request.nhs_number])},
            "authoredOn": request.authored.to_string(),
        });
        if let Some(done) = request.done_on {
            sr["occurrenceDateTime"] = json!(done.to_string());
        }
        call(
            fhir_json(client.post(format!("{fhir}/ServiceRequest")), &sr),
            format!("a {} request", request.code),
        )
        .await?;
    }
    let mut connection =
        crate::hl7v2::client::MllpClient::connect(mllp, std::time::Duration::from_secs(10))
            .await
            .map_err(|err| format!("MLLP {mllp}: {err}"))?;
    for message in &cohort.adt {
        let ack = connection
            .send(message.as_bytes())
            .await
            .map_err(|err| format!("MLLP {mllp}: {err}"))?;
        let ack = String::from_utf8_lossy(&ack);
        if !ack.contains("MSA|AA|") {
            return Err(format!("an ADT message was not accepted: {ack}"));
        }
    }
    Ok(())
}
