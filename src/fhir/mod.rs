//! FHIR R4 as the gateway carries it: the resource types it stores, how an
//! inbound resource is checked and turned into its stored form, search
//! parameters, dates, and OperationOutcome.

pub mod datetime;
pub mod json;
pub mod outcome;
pub mod resource;
pub mod search;

/// The resource types the gateway stores and serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceType {
    Patient,
    Encounter,
    CarePlan,
    ServiceRequest,
}

impl ResourceType {
    pub const ALL: [ResourceType; 4] = [
        ResourceType::Patient,
        ResourceType::Encounter,
        ResourceType::CarePlan,
        ResourceType::ServiceRequest,
    ];

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ResourceType::Patient => "Patient",
            ResourceType::Encounter => "Encounter",
            ResourceType::CarePlan => "CarePlan",
            ResourceType::ServiceRequest => "ServiceRequest",
        }
    }
}

impl std::fmt::Display for ResourceType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Is `id` a valid FHIR `id` (`[A-Za-z0-9\-\.]{1,64}`)?
pub fn is_valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// A new server-assigned id: a UUID v7, so ids sort roughly by creation time
/// and keyset paging walks resources in the order they arrived.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

#[cfg(test)]
mod robustness_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_ids_against_the_fhir_id_rule() {
        assert!(is_valid_id("a-B.9"));
        assert!(is_valid_id(&new_id()));
        for bad in ["", "a b", "a/b", "é", &"x".repeat(65)] {
            assert!(!is_valid_id(bad), "{bad}");
        }
    }
}
