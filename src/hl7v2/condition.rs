//! HL7 table 0357, message error condition codes: what an acknowledgement's
//! ERR-3 (v2.5) and ERR-1.4 (v2.3/2.4) say went wrong, so that an engine can
//! route an `AE` or `AR` by its code rather than by reading its text.

use serde::{Serialize, Serializer};

/// One code of HL7 table 0357 (v2.5 §2.15.5.3). The gateway gives each
/// refusal the code of its kind: 100 for a segment missing or repeated
/// where this interface takes one, 101 for a field required and missing,
/// 103 for a code outside its table, 102 for any other value that cannot
/// be taken, 200 to 203 for a message type, event, processing id or
/// version this interface does not take, 205 for a key that is someone
/// else's, 206 for records that kept changing, 207 for what the gateway
/// cannot do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Condition {
    /// 100: the message cannot be read as segments (or is not a message),
    /// or a segment it needs is missing (PID, PV1) or repeated where this
    /// interface takes one (a second merge group in an A40).
    SegmentSequence,
    /// 101: a field the mapping needs is empty.
    RequiredFieldMissing,
    /// 102: a value of the wrong form, or one that contradicts another.
    DataType,
    /// 103: a coded value outside its table.
    TableValueNotFound,
    /// 200: not a message type this interface takes.
    UnsupportedMessageType,
    /// 201: not an event this interface takes.
    UnsupportedEvent,
    /// 202: MSH-11 names a processing id this gateway does not take.
    UnsupportedProcessingId,
    /// 203: MSH-12 names an HL7 version this gateway does not take.
    UnsupportedVersionId,
    /// 205: a key (MSH-10, a hospital number) already names something else.
    DuplicateKey,
    /// 206: the records kept changing under the message.
    RecordLocked,
    /// 207: the gateway could not do what the message needs (the store
    /// failed, records it cannot choose between).
    InternalError,
}

impl Condition {
    /// Every condition the gateway gives, in code order.
    pub const ALL: [Condition; 11] = [
        Condition::SegmentSequence,
        Condition::RequiredFieldMissing,
        Condition::DataType,
        Condition::TableValueNotFound,
        Condition::UnsupportedMessageType,
        Condition::UnsupportedEvent,
        Condition::UnsupportedProcessingId,
        Condition::UnsupportedVersionId,
        Condition::DuplicateKey,
        Condition::RecordLocked,
        Condition::InternalError,
    ];

    /// Its place in [`Condition::ALL`].
    pub fn index(self) -> usize {
        Condition::ALL
            .iter()
            .position(|c| *c == self)
            .unwrap_or_default()
    }

    /// The code, as ERR-3.1 carries it.
    pub fn code(self) -> u16 {
        match self {
            Condition::SegmentSequence => 100,
            Condition::RequiredFieldMissing => 101,
            Condition::DataType => 102,
            Condition::TableValueNotFound => 103,
            Condition::UnsupportedMessageType => 200,
            Condition::UnsupportedEvent => 201,
            Condition::UnsupportedProcessingId => 202,
            Condition::UnsupportedVersionId => 203,
            Condition::DuplicateKey => 205,
            Condition::RecordLocked => 206,
            Condition::InternalError => 207,
        }
    }

    /// The table's display name, as ERR-3.2 carries it.
    pub fn name(self) -> &'static str {
        match self {
            Condition::SegmentSequence => "Segment sequence error",
            Condition::RequiredFieldMissing => "Required field missing",
            Condition::DataType => "Data type error",
            Condition::TableValueNotFound => "Table value not found",
            Condition::UnsupportedMessageType => "Unsupported message type",
            Condition::UnsupportedEvent => "Unsupported event code",
            Condition::UnsupportedProcessingId => "Unsupported processing id",
            Condition::UnsupportedVersionId => "Unsupported version id",
            Condition::DuplicateKey => "Duplicate key identifier",
            Condition::RecordLocked => "Application record locked",
            Condition::InternalError => "Application internal error",
        }
    }

    /// The condition whose code is `code`, if the gateway uses it.
    pub fn from_code(code: u64) -> Option<Condition> {
        Condition::ALL
            .into_iter()
            .find(|c| u64::from(c.code()) == code)
    }

    /// The condition of a FHIR validation issue (its `IssueType` code): a
    /// required element missing, a code outside its value set, or else a
    /// value that breaks a rule.
    pub fn of_issue(issue_type: &str) -> Condition {
        match issue_type {
            "required" => Condition::RequiredFieldMissing,
            "code-invalid" => Condition::TableValueNotFound,
            _ => Condition::DataType,
        }
    }
}

/// As its number: the dry run's and the quarantine's JSON show the code an
/// engine would read in ERR-3.
impl Serialize for Condition {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u16(self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_reads_back_as_its_condition() {
        for code in [100, 101, 102, 103, 200, 201, 202, 203, 205, 206, 207] {
            let condition = Condition::from_code(code).expect("a code the gateway uses");
            assert_eq!(u64::from(condition.code()), code);
            assert_eq!(Condition::ALL[condition.index()], condition);
            assert!(!condition.name().is_empty());
        }
        // 204 (unknown key) is table 0357's, not given.
        assert_eq!(Condition::from_code(204), None);
        assert_eq!(Condition::from_code(0), None);
    }

    #[test]
    fn validation_issues_take_the_code_of_their_kind() {
        assert_eq!(
            Condition::of_issue("required"),
            Condition::RequiredFieldMissing
        );
        assert_eq!(
            Condition::of_issue("code-invalid"),
            Condition::TableValueNotFound
        );
        assert_eq!(Condition::of_issue("invariant"), Condition::DataType);
        assert_eq!(
            serde_json::to_string(&Condition::DuplicateKey).unwrap(),
            "205"
        );
    }
}
