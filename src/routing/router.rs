//! The router: takes resource versions from the outbox in the order they
//! were written, evaluates rules and triggers on each, and stores the
//! deliveries and referrals they call for in the same transaction that
//! removes the versions from the outbox.

use super::care_homes::Register;
use super::metrics::RouterCounters;
use super::rules::{Referral, Rules, Uses, holds};
use super::scheduler::Command;
use super::{Clock, ROUTE_BATCH};
use crate::fhir::ResourceType;
use crate::fhir::json::Written;
use crate::fhir::resource::prepare_written;
use crate::fhir::search::identifier_query;
use crate::fhirpath::{Env, Expression};
use crate::gp::map::{ODS_SYSTEM, PATHWAY_SYSTEM, REFERRAL_SYSTEM, SERVICE_SYSTEM};
use crate::hl7v2::datatypes::london_zone;
use crate::store::{
    Mutation, NewDelivery, OutboxItem, RouteRequest, Store, StoreError, search_all,
};
use crate::validate::Validator;
use serde_json::{Value, json};
use std::cell::Cell;
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::sync::{mpsc, watch};

/// Identifies a referral a trigger created: one per trigger and resource.
pub const TRIGGER_ID_SYSTEM: &str = "https://fhir.onebromley.nhs.uk/Id/pathway-trigger";

pub(super) struct Router {
    pub store: Arc<dyn Store>,
    pub rules: Arc<Rules>,
    /// Destinations with a configured URL: rules naming others are idle.
    pub configured: HashSet<String>,
    /// The types some active rule or trigger looks at.
    pub routed: Vec<ResourceType>,
    pub register: Arc<Register>,
    pub validator: Arc<Validator>,
    pub clock: Arc<dyn Clock>,
    pub scheduler: mpsc::UnboundedSender<Command>,
    pub counters: Arc<RouterCounters>,
}

/// The variables of one resource's evaluation.
#[derive(Default)]
struct Context {
    patient: Value,
    care_plans: Value,
    care_home: Value,
    age: Value,
}

impl Router {
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let signal = self.store.outbox_signal();
        loop {
            // Registered before looking, so a commit in between is not missed.
            let notified = signal.notified();
            let wait = match self.pass().await {
                Ok(0) => true,
                Ok(_) => false,
                Err(StoreError::Closed) => return,
                Err(err) => {
                    tracing::error!(error = %err, "routing pass failed; trying again");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    false
                }
            };
            if *stop.borrow() {
                return;
            }
            if wait {
                tokio::select! {
                    _ = notified => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
        }
    }

    /// Routes one batch of the outbox; the number of versions routed.
    async fn pass(&self) -> Result<usize, StoreError> {
        let items = self.store.outbox(ROUTE_BATCH, self.routed.clone()).await?;
        let Some(last) = items.last() else {
            return Ok(0);
        };
        let routed_through = last.seq;
        let mut deliveries = Vec::new();
        let mut triggered = Vec::new();
        for item in &items {
            self.route(item, &mut deliveries, &mut triggered).await?;
        }
        let request = RouteRequest {
            routed_through,
            deliveries,
            triggered,
        };
        let outcome = self.store.route(request).await?;
        for result in &outcome.triggered {
            match result {
                Ok(written) if written.change == crate::store::Change::Created => {
                    self.counters
                        .referrals_triggered
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::info!(referral = %written.resource.id, "trigger created a referral");
                }
                Ok(_) => {}
                Err(err) => {
                    tracing::error!(error = %err, "a referral a trigger asked for was not stored")
                }
            }
        }
        self.counters
            .versions_routed
            .fetch_add(items.len() as u64, Ordering::Relaxed);
        self.counters
            .deliveries_created
            .fetch_add(outcome.deliveries.len() as u64, Ordering::Relaxed);
        if !outcome.deliveries.is_empty() {
            let _ = self.scheduler.send(Command::Add(outcome.deliveries));
        }
        Ok(items.len())
    }

    async fn route(
        &self,
        item: &OutboxItem,
        deliveries: &mut Vec<NewDelivery>,
        triggered: &mut Vec<Mutation>,
    ) -> Result<(), StoreError> {
        let stored = &item.resource;
        let ty = stored.resource_type;
        let rules: Vec<_> = self
            .rules
            .rules
            .iter()
            .filter(|r| r.resource == ty && r.to.iter().any(|d| self.configured.contains(d)))
            .collect();
        let triggers: Vec<_> = self
            .rules
            .triggers
            .iter()
            .filter(|t| t.resource == ty)
            .collect();
        if rules.is_empty() && triggers.is_empty() {
            return Ok(());
        }
        let Some(resource) = self.store.parsed(stored) else {
            tracing::error!(resource = %format!("{ty}/{}", stored.id), "stored JSON does not parse; not routed");
            return Ok(());
        };
        let patient_id = patient_of(ty, &stored.id, &resource);
        // Each expression first without the context: one that reads no
        // variable (a trigger's `status = 'finished' and …` on an encounter
        // still open) is decided without reading the patient or the care
        // plans. Only those that read one are evaluated again with it.
        let expressions: Vec<(&Expression, Uses)> = rules
            .iter()
            .map(|r| (&r.when, r.uses))
            .chain(triggers.iter().map(|t| (&t.when, t.uses)))
            .collect();
        let mut uses = Uses::default();
        let mut decided: Vec<Option<Result<bool, String>>> = {
            let unbound = Cell::new(false);
            let bare = Env {
                unbound: Some(&unbound),
                ..Env::new(&resource)
            };
            expressions
                .iter()
                .map(|(expression, used)| {
                    unbound.set(false);
                    let result = holds(expression, &bare);
                    if unbound.get() {
                        uses = uses.union(*used);
                        return None;
                    }
                    Some(result)
                })
                .collect()
        };
        let context = if decided.iter().all(Option::is_some) {
            Context::default()
        } else {
            self.context(ty, &resource, patient_id.as_deref(), uses)
                .await?
        };
        if decided.iter().any(Option::is_none) {
            let vars: Vec<(&str, &Value)> = vec![
                ("patient", &context.patient),
                ("carePlans", &context.care_plans),
                ("careHome", &context.care_home),
                ("age", &context.age),
            ];
            let env = Env {
                vars: &vars,
                ..Env::new(&resource)
            };
            for ((expression, _), decision) in expressions.iter().zip(decided.iter_mut()) {
                decision.get_or_insert_with(|| holds(expression, &env));
            }
        }
        let mut decisions = decided.into_iter().flatten();
        let lane = match &patient_id {
            Some(id) => format!("Patient/{id}"),
            None => format!("{ty}/{}", stored.id),
        };
        let mut chosen: Vec<&str> = Vec::new();
        for rule in &rules {
            match decisions.next().unwrap_or(Ok(false)) {
                Ok(true) => {
                    for destination in &rule.to {
                        if self.configured.contains(destination)
                            && !chosen.contains(&destination.as_str())
                        {
                            chosen.push(destination);
                            deliveries.push(NewDelivery {
                                destination: destination.clone(),
                                rule: rule.name.clone(),
                                lane: lane.clone(),
                                resource_type: ty,
                                resource_id: stored.id.clone(),
                                version: stored.version,
                                committed_ms: stored.last_updated_ms,
                                key: uuid::Uuid::now_v7().to_string(),
                            });
                        }
                    }
                }
                Ok(false) => {}
                Err(err) => self.rule_error(&rule.name, ty, &stored.id, &err),
            }
        }
        for trigger in &triggers {
            match decisions.next().unwrap_or(Ok(false)) {
                Ok(true) => {
                    let Some(patient) = &patient_id else {
                        self.rule_error(
                            &trigger.name,
                            ty,
                            &stored.id,
                            "the resource names no patient",
                        );
                        continue;
                    };
                    match self.referral(
                        trigger.creates,
                        &trigger.name,
                        ty,
                        &stored.id,
                        patient,
                        &resource,
                        &context,
                    ) {
                        Ok(mutation) => triggered.push(mutation),
                        Err(err) => self.rule_error(&trigger.name, ty, &stored.id, &err),
                    }
                }
                Ok(false) => {}
                Err(err) => self.rule_error(&trigger.name, ty, &stored.id, &err),
            }
        }
        Ok(())
    }

    fn rule_error(&self, name: &str, ty: ResourceType, id: &str, err: &str) {
        self.counters.rule_errors.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(rule = name, resource = %format!("{ty}/{id}"), error = err, "routing rule could not be evaluated; taken as no match");
    }

    async fn context(
        &self,
        ty: ResourceType,
        resource: &Value,
        patient_id: Option<&str>,
        uses: Uses,
    ) -> Result<Context, StoreError> {
        let mut context = Context::default();
        let needs_patient = uses.patient || uses.care_home || uses.age;
        if needs_patient {
            context.patient = match (ty, patient_id) {
                (ResourceType::Patient, _) => resource.clone(),
                (_, Some(id)) => match self.store.read(ResourceType::Patient, id).await? {
                    Some(stored) => serde_json::from_str(&stored.body).unwrap_or(Value::Null),
                    None => Value::Null,
                },
                _ => Value::Null,
            };
        }
        if uses.care_plans
            && let Some(id) = patient_id
        {
            let plans = search_all(
                &*self.store,
                ResourceType::CarePlan,
                "patient",
                &[id.to_string()],
            )
            .await?;
            context.care_plans = Value::Array(
                plans
                    .iter()
                    .filter_map(|p| serde_json::from_str(&p.body).ok())
                    .collect(),
            );
        }
        if uses.care_home
            && let Some(home) = self.register.home_of(&context.patient)
        {
            context.care_home = home.to_json();
        }
        if uses.age
            && let Some(age) = context.patient["birthDate"]
                .as_str()
                .and_then(|b| age_on(b, self.clock.now_ms()))
        {
            context.age = json!(age);
        }
        Ok(context)
    }

    /// The ServiceRequest a trigger creates, as a conditional create keyed
    /// by the trigger and the resource that fired it: firing again (a later
    /// version, a replay) finds it and creates nothing.
    #[allow(clippy::too_many_arguments)]
    fn referral(
        &self,
        referral: &Referral,
        trigger: &str,
        ty: ResourceType,
        id: &str,
        patient: &str,
        resource: &Value,
        context: &Context,
    ) -> Result<Mutation, String> {
        let system = format!("{TRIGGER_ID_SYSTEM}/{trigger}");
        let value = format!("{ty}/{id}");
        let authored = jiff::Timestamp::from_second(self.clock.now_ms().div_euclid(1000))
            .map_err(|e| e.to_string())?
            .to_string();
        let mut request = json!({
            "resourceType": "ServiceRequest",
            "identifier": [{"system": system, "value": value}],
            "status": "active",
            "intent": "order",
            "category": [{"coding": [{"system": PATHWAY_SYSTEM, "code": referral.pathway, "display": referral.pathway_display}]}],
            "code": {"coding": [{"system": REFERRAL_SYSTEM, "code": referral.code, "display": referral.display}]},
            "subject": {"reference": format!("Patient/{patient}")},
            "authoredOn": authored,
            "performer": [{
                "identifier": {"system": SERVICE_SYSTEM, "value": referral.service},
                "display": referral.service_display
            }],
            "encounter": {"reference": value},
            "reasonCode": [{"text": format!("{} (routing trigger {trigger})", reason_of(ty, resource))}],
        });
        let provider = &resource["serviceProvider"]["identifier"];
        if provider["system"] == ODS_SYSTEM && provider["value"].is_string() {
            request["requester"] = json!({"identifier": provider});
        }
        if let Some(home) = context.care_home.as_object() {
            request["locationReference"] = json!([{
                "identifier": {"system": ODS_SYSTEM, "value": home["ods"]},
                "display": home["name"]
            }]);
        }
        let prepared = prepare_written(
            &Written::of(&request),
            &request,
            Some(ResourceType::ServiceRequest),
            &self.validator,
        )
        .map_err(|rejection| {
            let issues: Vec<String> = rejection
                .issues()
                .iter()
                .filter(|i| i.severity == crate::fhir::outcome::Severity::Error)
                .map(|i| format!("{} ({})", i.diagnostics, i.expression.join(", ")))
                .collect();
            format!("the referral it builds is not valid: {}", issues.join("; "))
        })?;
        Ok(Mutation::Create {
            resource: prepared,
            id: uuid::Uuid::now_v7().to_string(),
            if_none_exist: Some(identifier_query(
                ResourceType::ServiceRequest,
                &[(system, value)],
            )),
            full_url: None,
        })
    }
}

/// Why a trigger fired, in words: for an Encounter, the discharge.
fn reason_of(ty: ResourceType, resource: &Value) -> String {
    match (ty, resource["period"]["end"].as_str()) {
        (ResourceType::Encounter, Some(end)) => format!("Hospital discharge at {end}"),
        _ => format!("{ty} {}", resource["status"].as_str().unwrap_or("changed")),
    }
}

/// The patient a resource is about: itself, or its `subject` / `patient`
/// reference (`Patient/{id}`).
fn patient_of(ty: ResourceType, id: &str, resource: &Value) -> Option<String> {
    if ty == ResourceType::Patient {
        return Some(id.to_string());
    }
    ["subject", "patient"].iter().find_map(|member| {
        let reference = resource[member]["reference"].as_str()?;
        let reference = reference
            .split_once("/_history/")
            .map_or(reference, |(r, _)| r);
        let (_, id) = reference.rsplit_once("Patient/")?;
        // A FHIR id: 1 to 64 of A-Z a-z 0-9 - .
        let valid = (1..=64).contains(&id.len())
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        valid.then(|| id.to_string())
    })
}

/// Age in whole years on the London date of `now_ms`, from a FHIR date
/// (`YYYY`, `YYYY-MM` or `YYYY-MM-DD`; a partial date counts from its end,
/// so nobody is taken to be older than they may be).
pub fn age_on(birth_date: &str, now_ms: i64) -> Option<i64> {
    let zone = london_zone()?;
    let today = jiff::Timestamp::from_millisecond(now_ms)
        .ok()?
        .to_zoned(zone)
        .date();
    let mut parts = birth_date.split('-');
    let year: i16 = parts.next()?.parse().ok()?;
    let month: i8 = parts.next().map_or(Ok(12), str::parse).ok()?;
    let day: Option<i8> = match parts.next() {
        Some(d) => Some(d.parse().ok()?),
        None => None,
    };
    let born = match day {
        Some(day) => jiff::civil::Date::new(year, month, day).ok()?,
        None => jiff::civil::Date::new(year, month, 1).ok()?.last_of_month(),
    };
    if born > today {
        return None;
    }
    let mut age = i64::from(today.year() - born.year());
    if (today.month(), today.day()) < (born.month(), born.day()) {
        age -= 1;
    }
    Some(age)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(text: &str) -> i64 {
        text.parse::<jiff::Timestamp>().unwrap().as_millisecond()
    }

    #[test]
    fn age_turns_on_the_birthday_in_london() {
        let now = ms("2026-03-05T00:30:00Z");
        assert_eq!(age_on("1961-03-05", now), Some(65));
        assert_eq!(age_on("1961-03-06", now), Some(64));
        // 23:30 UTC on 4 March in summer would be the 5th in London; in
        // winter it is still the 4th.
        assert_eq!(age_on("1961-03-05", ms("2026-03-04T23:30:00Z")), Some(64));
        assert_eq!(age_on("1961-06-05", ms("2026-06-04T23:30:00Z")), Some(65));
        assert_eq!(age_on("1961", now), Some(64));
        assert_eq!(age_on("1961-02", now), Some(65));
        assert_eq!(age_on("2030-01-01", now), None);
        assert_eq!(age_on("garbage", now), None);
    }

    #[test]
    fn the_patient_is_the_subject_or_the_resource_itself() {
        let encounter = json!({"subject": {"reference": "Patient/p1"}});
        assert_eq!(
            patient_of(ResourceType::Encounter, "e1", &encounter).as_deref(),
            Some("p1")
        );
        assert_eq!(
            patient_of(ResourceType::Patient, "p9", &json!({})).as_deref(),
            Some("p9")
        );
        let logical = json!({"subject": {"identifier": {"value": "943"}}});
        assert_eq!(
            patient_of(ResourceType::ServiceRequest, "s1", &logical),
            None
        );
        let absolute = json!({"subject": {"reference": "https://x/fhir/Patient/p2"}});
        assert_eq!(
            patient_of(ResourceType::CarePlan, "c1", &absolute).as_deref(),
            Some("p2")
        );
        let versioned = json!({"subject": {"reference": "Patient/p3/_history/2"}});
        assert_eq!(
            patient_of(ResourceType::Encounter, "e2", &versioned).as_deref(),
            Some("p3")
        );
        let odd = json!({"subject": {"reference": "Patient/a,b"}});
        assert_eq!(patient_of(ResourceType::Encounter, "e3", &odd), None);
    }
}
