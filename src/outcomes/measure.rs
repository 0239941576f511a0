//! The outcome figures, counted from facts exactly as the contract defines
//! them. Pure: the same facts and dates always give the same report.
//!
//! Windows are London calendar days, half-open: with `A` the assessment
//! date and `N` the window in weeks, *before* is `[A − 7N days, A)` and
//! *after* is `[A, A + 7N days)`. An event on the assessment day counts
//! after; one exactly N weeks before counts before; one exactly N weeks
//! after counts in neither. A patient is in the cohort when `A` is at least
//! N weeks before `as_of` (`A + 7N days ≤ as_of`), so their after window is
//! complete.

use super::facts::{Contact, EncounterFact, RequestFact};
use super::{Settings, UnitCost};
use jiff::ToSpan;
use jiff::civil::Date;
use serde::Serialize;
use std::collections::{HashMap, HashSet};

/// Everything the figures are counted from.
#[derive(Debug, Default, Clone)]
pub struct Facts {
    /// Pathway ServiceRequests (referrals and reviews).
    pub requests: Vec<RequestFact>,
    /// Each patient's MDT assessment date (the earliest active plan's).
    pub assessments: HashMap<String, Date>,
    pub encounters: Vec<EncounterFact>,
    /// Care-home residents (by the register and their current address).
    pub residents: HashSet<String>,
    /// Patients with a national data opt-out: in no figure.
    pub opted_out: HashSet<String>,
    /// Residents as a worklist shows them: NHS number, name, care home.
    pub people: HashMap<String, Person>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Person {
    pub nhs_number: String,
    pub name: String,
    pub care_home: String,
}

/// A care-home resident with something overdue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overdue {
    pub patient: String,
    pub person: Person,
    pub reasons: Vec<String>,
}

/// Residents overdue, by the same rules as the figures: no admission
/// assessment; no assessment in the last 6 months; no medicines review in
/// the last 12 months; a discharge (in the period) with no review after it.
pub fn worklist(facts: &Facts, period: Period) -> Vec<Overdue> {
    let mut list = Vec::new();
    let mut residents: Vec<&String> = facts
        .residents
        .iter()
        .filter(|p| !facts.opted_out.contains(*p))
        .collect();
    residents.sort();
    let index = ByPatient::new(facts);
    for patient in residents {
        let care = index.care_home(patient, period);
        let mut reasons = Vec::new();
        if !care.admission_assessed {
            reasons.push("no admission assessment".to_string());
        }
        if !care.assessed_recently {
            reasons.push("no assessment in the last 6 months".to_string());
        }
        if !care.medicines_reviewed {
            reasons.push("no medicines review in the last 12 months".to_string());
        }
        if care.reviewed < care.discharges {
            reasons.push(format!(
                "{} discharge(s) without a review",
                care.discharges - care.reviewed
            ));
        }
        if !reasons.is_empty() {
            list.push(Overdue {
                patient: patient.clone(),
                person: facts.people.get(patient).cloned().unwrap_or_default(),
                reasons,
            });
        }
    }
    list
}

/// Referrals per calendar month (`YYYY-MM`) for the 12 months up to
/// `as_of`: proactive care and Bromley @Home, opt-outs excluded.
pub fn referrals_by_month(facts: &Facts, period: Period) -> Vec<(String, usize, usize)> {
    let mut months: Vec<(String, usize, usize)> = (0..12)
        .rev()
        .filter_map(|back| {
            period
                .as_of
                .first_of_month()
                .checked_sub(back.months())
                .ok()
        })
        .map(|d| (d.strftime("%Y-%m").to_string(), 0, 0))
        .collect();
    for r in &facts.requests {
        if facts.opted_out.contains(&r.patient) {
            continue;
        }
        let Some(authored) = r.authored.filter(|d| *d <= period.as_of) else {
            continue;
        };
        let month = authored.strftime("%Y-%m").to_string();
        if let Some(slot) = months.iter_mut().find(|(m, _, _)| *m == month) {
            if r.code == "proactive-care-assessment" {
                slot.1 += 1;
            } else if r.code.starts_with("at-home-") {
                slot.2 += 1;
            }
        }
    }
    months
}

/// The reporting dates: `as_of`, and the period referrals and discharges
/// are counted in (`from` open when `None`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period {
    pub as_of: Date,
    pub from: Option<Date>,
    pub to: Date,
}

impl Period {
    /// `as_of` (default today in London), `from` (default open), `to`
    /// (default `as_of`); `from` after `to` is refused.
    pub fn new(
        as_of: Option<Date>,
        from: Option<Date>,
        to: Option<Date>,
    ) -> Result<Period, String> {
        let as_of = as_of.unwrap_or_else(super::today);
        let to = to.unwrap_or(as_of);
        if let Some(from) = from
            && from > to
        {
            return Err(format!("from ({from}) is after to ({to})"));
        }
        Ok(Period { as_of, from, to })
    }

    fn contains(&self, date: Date) -> bool {
        self.from.is_none_or(|from| date >= from) && date <= self.to
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    pub as_of: String,
    pub from: Option<String>,
    pub to: String,
    pub window_weeks: i64,
    pub proactive_care: ProactiveCare,
    pub bromley_at_home: AtHome,
    pub care_homes: CareHomes,
    /// Patients left out of every figure for a national data opt-out.
    pub opted_out_excluded: usize,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ProactiveCare {
    pub referrals: usize,
    pub cohort: usize,
    pub ed_contacts: BeforeAfter,
    pub non_elective_admissions: BeforeAfter,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BeforeAfter {
    pub before: i64,
    pub after: i64,
    pub fewer: i64,
    pub reduction_pct: f64,
    pub cost_saved_gbp: f64,
    pub unit_cost_gbp: f64,
    pub unit_cost_basis: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AtHome {
    pub referrals: usize,
    pub admitted_within_days: i64,
    pub admitted: usize,
    pub admitted_pct: f64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CareHomes {
    pub residents: usize,
    pub admission_assessment_pct: f64,
    pub assessed_last_6_months_pct: f64,
    pub medicines_review_last_12_months_pct: f64,
    pub post_discharge_review_pct: f64,
    /// Hospital discharges of residents in the period, and how many had a
    /// review after them.
    pub discharges: usize,
    pub discharges_reviewed: usize,
}

fn pct(part: usize, whole: usize) -> f64 {
    if whole == 0 {
        return 0.0;
    }
    round(part as f64 * 100.0 / whole as f64, 1)
}

fn round(value: f64, places: i32) -> f64 {
    let scale = 10f64.powi(places);
    (value * scale).round() / scale
}

fn before_after(before: i64, after: i64, cost: &UnitCost) -> BeforeAfter {
    let fewer = before - after;
    BeforeAfter {
        before,
        after,
        fewer,
        reduction_pct: if before == 0 {
            0.0
        } else {
            round(fewer as f64 * 100.0 / before as f64, 1)
        },
        cost_saved_gbp: round(fewer as f64 * cost.gbp, 2),
        unit_cost_gbp: cost.gbp,
        unit_cost_basis: cost.basis.clone(),
    }
}

pub fn measure(facts: &Facts, period: Period, settings: &Settings) -> Report {
    let counted = |patient: &str| !facts.opted_out.contains(patient);
    // A referral entered in error was never made.
    let made = |r: &&RequestFact| r.status != "entered-in-error";
    let weeks = settings.window_weeks;
    let window = (7 * weeks).days();

    // Proactive care.
    let referrals = facts
        .requests
        .iter()
        .filter(made)
        .filter(|r| r.code == "proactive-care-assessment" && counted(&r.patient))
        .filter(|r| r.authored.is_some_and(|d| period.contains(d)))
        .count();
    let cohort: Vec<(&String, Date)> = facts
        .assessments
        .iter()
        .filter(|(patient, _)| counted(patient))
        .filter(|(_, a)| a.checked_add(window).is_ok_and(|end| end <= period.as_of))
        .map(|(p, a)| (p, *a))
        .collect();
    let index = ByPatient::new(facts);
    let by_patient = &index.encounters;
    let (mut ed, mut nel) = ((0, 0), (0, 0));
    for (patient, assessed) in &cohort {
        let (Ok(first), Ok(last)) = (assessed.checked_sub(window), assessed.checked_add(window))
        else {
            continue;
        };
        for e in by_patient.get(patient.as_str()).into_iter().flatten() {
            let contacts = [
                (e.contact, e.start),
                (e.ed_before.map(|_| Contact::EdAttendance), e.ed_before),
            ];
            for (contact, start) in contacts {
                let (Some(contact), Some(start)) = (contact, start) else {
                    continue;
                };
                let slot = match contact {
                    Contact::EdAttendance => &mut ed,
                    Contact::NonElectiveAdmission => &mut nel,
                };
                if first <= start && start < *assessed {
                    slot.0 += 1;
                } else if *assessed <= start && start < last {
                    slot.1 += 1;
                }
            }
        }
    }

    // Bromley @Home.
    let within = settings.at_home_admitted_within_days;
    let at_home: Vec<&RequestFact> = facts
        .requests
        .iter()
        .filter(made)
        .filter(|r| r.code.starts_with("at-home-") && counted(&r.patient))
        .filter(|r| r.authored.is_some_and(|d| period.contains(d)))
        .collect();
    let admitted = at_home
        .iter()
        .filter(|r| {
            let Some(referred) = r.authored else {
                return false;
            };
            let until = referred.checked_add(within.days()).unwrap_or(Date::MAX);
            by_patient
                .get(r.patient.as_str())
                .into_iter()
                .flatten()
                .any(|e| {
                    e.contact == Some(Contact::NonElectiveAdmission)
                        && e.start
                            .is_some_and(|s| referred <= s && s <= until && s <= period.as_of)
                })
        })
        .count();

    // Care homes.
    let residents: Vec<&String> = facts.residents.iter().filter(|p| counted(p)).collect();
    let care: Vec<CareHomeStatus> = residents
        .iter()
        .map(|p| index.care_home(p, period))
        .collect();
    let count = |test: fn(&CareHomeStatus) -> bool| care.iter().filter(|c| test(c)).count();
    let admission_assessed = count(|c| c.admission_assessed);
    let assessed_recently = count(|c| c.assessed_recently);
    let medicines_reviewed = count(|c| c.medicines_reviewed);
    let discharges: usize = care.iter().map(|c| c.discharges).sum();
    let reviewed: usize = care.iter().map(|c| c.reviewed).sum();

    // Opted-out patients who would otherwise be in a figure.
    let opted_out_excluded = facts
        .opted_out
        .iter()
        .filter(|p| {
            facts.assessments.contains_key(*p)
                || facts.residents.contains(*p)
                || facts.requests.iter().any(|r| &r.patient == *p)
        })
        .count();
    Report {
        as_of: period.as_of.to_string(),
        from: period.from.map(|d| d.to_string()),
        to: period.to.to_string(),
        window_weeks: weeks,
        proactive_care: ProactiveCare {
            referrals,
            cohort: cohort.len(),
            ed_contacts: before_after(ed.0, ed.1, &settings.ed_contact),
            non_elective_admissions: before_after(nel.0, nel.1, &settings.non_elective_admission),
        },
        bromley_at_home: AtHome {
            referrals: at_home.len(),
            admitted_within_days: within,
            admitted,
            admitted_pct: pct(admitted, at_home.len()),
        },
        care_homes: CareHomes {
            residents: residents.len(),
            admission_assessment_pct: pct(admission_assessed, residents.len()),
            assessed_last_6_months_pct: pct(assessed_recently, residents.len()),
            medicines_review_last_12_months_pct: pct(medicines_reviewed, residents.len()),
            post_discharge_review_pct: pct(reviewed, discharges),
            discharges,
            discharges_reviewed: reviewed,
        },
        opted_out_excluded,
    }
}

/// A patient's requests and encounters, looked up by patient.
struct ByPatient<'a> {
    requests: HashMap<&'a str, Vec<&'a RequestFact>>,
    encounters: HashMap<&'a str, Vec<&'a EncounterFact>>,
}

/// Where one care-home resident stands, by the rules of the figures.
struct CareHomeStatus {
    admission_assessed: bool,
    /// An admission or periodic assessment in the last 6 months.
    assessed_recently: bool,
    /// A medicines review (or a post-discharge review, which has one) in
    /// the last 12 months.
    medicines_reviewed: bool,
    /// Hospital discharges in the period, and those followed by a review.
    discharges: usize,
    reviewed: usize,
}

impl<'a> ByPatient<'a> {
    fn new(facts: &'a Facts) -> ByPatient<'a> {
        let mut index = ByPatient {
            requests: HashMap::new(),
            encounters: HashMap::new(),
        };
        for r in &facts.requests {
            index
                .requests
                .entry(r.patient.as_str())
                .or_default()
                .push(r);
        }
        for e in &facts.encounters {
            index
                .encounters
                .entry(e.patient.as_str())
                .or_default()
                .push(e);
        }
        index
    }

    /// Completed requests of `patient` with one of `codes`, done by `as_of`
    /// (and on or after `since`).
    fn done(&self, patient: &str, codes: &[&str], since: Option<Date>, as_of: Date) -> bool {
        self.requests.get(patient).into_iter().flatten().any(|r| {
            codes.contains(&r.code.as_str())
                && r.completed()
                && r.done_on
                    .is_some_and(|d| d <= as_of && since.is_none_or(|s| d >= s))
        })
    }

    fn care_home(&self, patient: &str, period: Period) -> CareHomeStatus {
        let as_of = period.as_of;
        let six_months = as_of.checked_sub(6.months()).ok();
        let twelve_months = as_of.checked_sub(12.months()).ok();
        let (discharges, reviewed) = self.post_discharge_reviews(patient, period);
        CareHomeStatus {
            admission_assessed: self.done(
                patient,
                &["care-home-admission-assessment"],
                None,
                as_of,
            ),
            assessed_recently: self.done(
                patient,
                &[
                    "care-home-admission-assessment",
                    "care-home-periodic-assessment",
                ],
                six_months,
                as_of,
            ),
            medicines_reviewed: self.done(
                patient,
                &[
                    "care-home-medicines-review",
                    "care-home-post-discharge-review",
                ],
                twelve_months,
                as_of,
            ),
            discharges,
            reviewed,
        }
    }

    /// A resident's hospital discharges in the period, and how many were
    /// followed by a completed post-discharge review: one made for that
    /// encounter, or one done on or after the discharge day and before the
    /// patient's next discharge.
    fn post_discharge_reviews(&self, patient: &str, period: Period) -> (usize, usize) {
        let mut stays: Vec<(Date, &str)> = self
            .encounters
            .get(patient)
            .into_iter()
            .flatten()
            .filter(|e| e.inpatient)
            .filter_map(|e| e.discharged.map(|d| (d, e.id.as_str())))
            .filter(|(d, _)| *d <= period.as_of)
            .collect();
        stays.sort();
        let reviews: Vec<&RequestFact> = self
            .requests
            .get(patient)
            .into_iter()
            .flatten()
            .copied()
            .filter(|r| {
                r.code == "care-home-post-discharge-review"
                    && r.completed()
                    && r.done_on.is_some_and(|d| d <= period.as_of)
            })
            .collect();
        let (mut discharges, mut reviewed) = (0, 0);
        for (i, (discharged, encounter)) in stays.iter().enumerate() {
            if !period.contains(*discharged) {
                continue;
            }
            discharges += 1;
            let next = stays.get(i + 1).map(|(d, _)| *d);
            let followed = reviews.iter().any(|r| {
                r.encounter.as_deref() == Some(*encounter)
                    || r.done_on
                        .is_some_and(|d| d >= *discharged && next.is_none_or(|n| d < n))
            });
            if followed {
                reviewed += 1;
            }
        }
        (discharges, reviewed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(text: &str) -> Date {
        text.parse().unwrap()
    }

    fn contact(patient: &str, kind: Contact, start: &str) -> EncounterFact {
        EncounterFact {
            patient: patient.into(),
            id: format!("{patient}-{start}"),
            contact: Some(kind),
            ed_before: None,
            inpatient: kind == Contact::NonElectiveAdmission,
            start: Some(d(start)),
            discharged: None,
        }
    }

    fn period(as_of: &str) -> Period {
        Period {
            as_of: d(as_of),
            from: None,
            to: d(as_of),
        }
    }

    #[test]
    fn window_edges_are_half_open_around_the_assessment_day() {
        // Assessed 2026-03-02; 13 weeks = 91 days: before [2025-12-01, 2026-03-02),
        // after [2026-03-02, 2026-06-01).
        let mut facts = Facts::default();
        facts.assessments.insert("p".into(), d("2026-03-02"));
        for (start, _) in [
            ("2025-11-30", "a day too early: neither"),
            ("2025-12-01", "exactly 13 weeks before: before"),
            ("2026-03-01", "the day before: before"),
            ("2026-03-02", "the assessment day: after"),
            ("2026-05-31", "the last day: after"),
            ("2026-06-01", "exactly 13 weeks after: neither"),
        ] {
            facts
                .encounters
                .push(contact("p", Contact::EdAttendance, start));
        }
        let settings = Settings::default();
        let report = measure(&facts, period("2026-06-01"), &settings);
        assert_eq!(report.proactive_care.cohort, 1);
        let ed = &report.proactive_care.ed_contacts;
        assert_eq!((ed.before, ed.after, ed.fewer), (2, 2, 0));
        // A day earlier the after window is not complete: not in the cohort.
        let report = measure(&facts, period("2026-05-31"), &settings);
        assert_eq!(report.proactive_care.cohort, 0);
        assert_eq!(report.proactive_care.ed_contacts.before, 0);
    }

    /// An ED attendance admitted under its visit number is one encounter
    /// and two contacts: the attendance on its day, the admission on its.
    #[test]
    fn an_attendance_admitted_under_its_visit_number_counts_as_both_contacts() {
        let mut facts = Facts::default();
        facts.assessments.insert("p".into(), d("2026-03-02"));
        let mut admitted = contact("p", Contact::NonElectiveAdmission, "2026-03-02");
        // Attended the day before the assessment, admitted on the day.
        admitted.ed_before = Some(d("2026-03-01"));
        facts.encounters.push(admitted);
        let report = measure(&facts, period("2026-12-01"), &Settings::default());
        let pc = &report.proactive_care;
        assert_eq!((pc.ed_contacts.before, pc.ed_contacts.after), (1, 0));
        assert_eq!(
            (
                pc.non_elective_admissions.before,
                pc.non_elective_admissions.after
            ),
            (0, 1)
        );
    }

    #[test]
    fn reduction_and_cost_use_the_configured_unit_costs() {
        let mut facts = Facts::default();
        facts.assessments.insert("p".into(), d("2026-03-02"));
        for start in ["2026-01-05", "2026-01-06", "2026-02-01", "2026-02-02"] {
            facts
                .encounters
                .push(contact("p", Contact::NonElectiveAdmission, start));
        }
        facts
            .encounters
            .push(contact("p", Contact::NonElectiveAdmission, "2026-04-01"));
        let report = measure(&facts, period("2026-12-01"), &Settings::default());
        let nel = &report.proactive_care.non_elective_admissions;
        assert_eq!((nel.before, nel.after, nel.fewer), (4, 1, 3));
        assert_eq!(nel.reduction_pct, 75.0);
        assert_eq!(nel.cost_saved_gbp, 3092.67);
        assert_eq!(nel.unit_cost_gbp, 1030.89);
    }

    #[test]
    fn the_one_bromley_figures_come_out_at_the_implied_unit_costs() {
        let settings = Settings::default();
        let ed = before_after(1704, 1261, &settings.ed_contact);
        assert_eq!(ed.fewer, 443);
        assert_eq!(ed.reduction_pct, 26.0);
        assert!(
            (ed.cost_saved_gbp - 81_000.0).abs() < 5.0,
            "{}",
            ed.cost_saved_gbp
        );
        let nel = before_after(1177, 918, &settings.non_elective_admission);
        assert_eq!(nel.fewer, 259);
        assert_eq!(nel.reduction_pct, 22.0);
        assert!(
            (nel.cost_saved_gbp - 267_000.0).abs() < 5.0,
            "{}",
            nel.cost_saved_gbp
        );
    }
}
