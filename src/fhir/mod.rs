//! FHIR R4 as the gateway carries it: the resource types it stores, how an
//! inbound resource is checked and turned into its stored form, search
//! parameters, dates, and OperationOutcome.

pub mod datetime;
pub mod json;
pub mod outcome;
pub mod resource;
pub mod search;
pub mod value;

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

/// Whether `text` is an NHS number: ten digits, the last the Modulus 11
/// check digit of the first nine (NHS Digital's algorithm; a check of 10
/// means no valid number has those nine).
pub fn is_nhs_number(text: &str) -> bool {
    let d = text.as_bytes();
    if d.len() != 10 || !d.iter().all(u8::is_ascii_digit) {
        return false;
    }
    let sum: u32 = d[..9]
        .iter()
        .zip((2..=10).rev())
        .map(|(b, weight)| u32::from(b - b'0') * weight)
        .sum();
    match 11 - sum % 11 {
        11 => d[9] == b'0',
        10 => false,
        check => u32::from(d[9] - b'0') == check,
    }
}

/// A new server-assigned id: a UUID v7, so ids sort roughly by creation time
/// and keyset paging walks resources in the order they arrived.
///
/// Its 74 random bits come from a per-thread generator seeded once from the
/// OS (the `uuid` crate's own asks the OS for every id: a system call each,
/// 2% of a GP list's CPU). Ids need to be unique, not secret.
pub fn new_id() -> String {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new(seed());
    }
    fn seed() -> u64 {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(
            &uuid::Uuid::new_v7(uuid::Timestamp::now(uuid::NoContext)).as_bytes()[8..],
        );
        u64::from_le_bytes(bytes) ^ std::process::id() as u64
    }
    // splitmix64: every seed gives a full-period sequence.
    let next = || {
        STATE.with(|state| {
            let mut z = state.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
            state.set(z);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        })
    };
    let mut random = [0u8; 10];
    random[..8].copy_from_slice(&next().to_le_bytes());
    random[8..].copy_from_slice(&next().to_le_bytes()[..2]);
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    uuid::Builder::from_unix_timestamp_millis(millis, &random)
        .into_uuid()
        .to_string()
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

    #[test]
    fn new_ids_are_unique_time_ordered_uuid_v7s() {
        let before = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let batches: Vec<Vec<String>> = (0..4)
            .map(|_| std::thread::spawn(|| (0..25_000).map(|_| new_id()).collect()))
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect();
        let mut seen = std::collections::HashSet::new();
        for id in batches.iter().flatten() {
            let uuid = uuid::Uuid::parse_str(id).unwrap();
            assert_eq!(uuid.get_version_num(), 7, "{id}");
            let (secs, nanos) = uuid.get_timestamp().unwrap().to_unix();
            assert!(secs * 1000 + u64::from(nanos) / 1_000_000 >= before, "{id}");
            assert!(seen.insert(id.clone()), "{id} twice");
        }
        assert_eq!(seen.len(), 100_000);
    }
}
