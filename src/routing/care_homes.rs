//! The care-home register: a CSV file `ods_code,name,postcode` (with that
//! header) naming the care homes the care-home GP service covers. A patient
//! whose current home address has a register postcode is a resident.

use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CareHome {
    pub ods_code: String,
    pub name: String,
    pub postcode: String,
}

impl CareHome {
    /// As the `%careHome` variable of routing expressions.
    pub fn to_json(&self) -> Value {
        json!({"ods": self.ods_code, "name": self.name, "postcode": self.postcode})
    }
}

/// Care homes by normalised postcode.
#[derive(Debug, Clone, Default)]
pub struct Register {
    by_postcode: HashMap<String, CareHome>,
}

/// `BR1 3PT`, `br13pt` and ` BR1  3PT ` are one postcode.
pub fn normalise_postcode(postcode: &str) -> String {
    postcode
        .chars()
        .filter(|c| !c.is_whitespace())
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

impl Register {
    pub fn load(path: &Path) -> Result<Register, String> {
        let bytes = std::fs::read(path).map_err(|err| {
            format!(
                "cannot read the care-home register {}: {err}",
                path.display()
            )
        })?;
        Register::parse(&bytes)
            .map_err(|err| format!("care-home register {}: {err}", path.display()))
    }

    pub fn parse(bytes: &[u8]) -> Result<Register, String> {
        let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
        let mut reader = csv::ReaderBuilder::new()
            .flexible(true)
            .trim(csv::Trim::All)
            .from_reader(bytes);
        let headers = reader
            .headers()
            .map_err(|err| format!("line 1: {err}"))?
            .clone();
        let column = |name: &str| {
            headers
                .iter()
                .position(|h| h.eq_ignore_ascii_case(name))
                .ok_or_else(|| {
                    format!("line 1: no `{name}` column (expected ods_code,name,postcode)")
                })
        };
        let (ods, name, postcode) = (column("ods_code")?, column("name")?, column("postcode")?);
        let mut register = Register::default();
        for (index, record) in reader.records().enumerate() {
            let line = index + 2;
            let record = record.map_err(|err| format!("line {line}: {err}"))?;
            if record.iter().all(str::is_empty) {
                continue;
            }
            let field = |i: usize, what: &str| -> Result<String, String> {
                match record.get(i) {
                    Some(value) if !value.is_empty() => Ok(value.to_string()),
                    _ => Err(format!("line {line}, column {what}: empty")),
                }
            };
            let home = CareHome {
                ods_code: field(ods, "ods_code")?,
                name: field(name, "name")?,
                postcode: field(postcode, "postcode")?,
            };
            if !home.ods_code.chars().all(|c| c.is_ascii_alphanumeric()) {
                return Err(format!(
                    "line {line}, column ods_code: `{}` is not an ODS code",
                    home.ods_code
                ));
            }
            let key = normalise_postcode(&home.postcode);
            if let Some(earlier) = register.by_postcode.get(&key) {
                return Err(format!(
                    "line {line}, column postcode: {} is also the postcode of {} ({}); residents could not be told apart",
                    home.postcode, earlier.name, earlier.ods_code
                ));
            }
            register.by_postcode.insert(key, home);
        }
        Ok(register)
    }

    /// Every care home's postcode, as written in the register.
    pub fn postcodes(&self) -> Vec<&str> {
        self.by_postcode
            .values()
            .map(|h| h.postcode.as_str())
            .collect()
    }

    pub fn len(&self) -> usize {
        self.by_postcode.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_postcode.is_empty()
    }

    /// The care home a Patient lives in: the first current address
    /// (`use` not `old`, no `period.end`) with a register postcode.
    pub fn home_of(&self, patient: &Value) -> Option<&CareHome> {
        if self.by_postcode.is_empty() {
            return None;
        }
        patient["address"]
            .as_array()?
            .iter()
            .filter(|a| a["use"] != "old" && a["period"]["end"].is_null())
            .filter_map(|a| a["postalCode"].as_str())
            .find_map(|postcode| self.by_postcode.get(&normalise_postcode(postcode)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REGISTER: &str = "\u{feff}ods_code,name,postcode\r\nVM101,Elm House,BR1 1AA\r\nVM102,\"Oak Lodge, Beckenham\",br3 4bb\r\n,,\r\n";

    #[test]
    fn residents_are_found_by_current_home_postcode() {
        let register = Register::parse(REGISTER.as_bytes()).unwrap();
        assert_eq!(register.len(), 2);
        let patient = serde_json::json!({"address": [
            {"use": "old", "postalCode": "BR1 1AA"},
            {"use": "home", "postalCode": "BR34BB"}
        ]});
        assert_eq!(
            register.home_of(&patient).unwrap().name,
            "Oak Lodge, Beckenham"
        );
        let moved_out = serde_json::json!({"address": [
            {"use": "home", "postalCode": "BR1 1AA", "period": {"end": "2026-01-01"}}
        ]});
        assert_eq!(register.home_of(&moved_out), None);
        assert_eq!(register.home_of(&serde_json::json!({})), None);
    }

    #[test]
    fn bad_registers_are_refused_with_line_and_column() {
        let err = Register::parse(b"ods,name,postcode\nVM1,A,BR1 1AA\n").unwrap_err();
        assert!(err.contains("line 1") && err.contains("ods_code"), "{err}");
        let err = Register::parse(b"ods_code,name,postcode\nVM1,A,\n").unwrap_err();
        assert_eq!(err, "line 2, column postcode: empty");
        let err =
            Register::parse(b"ods_code,name,postcode\nVM1,A,BR1 1AA\nVM2,B,br11aa\n").unwrap_err();
        assert!(
            err.starts_with("line 3, column postcode") && err.contains("A (VM1)"),
            "{err}"
        );
        let err = Register::parse(b"ods_code,name,postcode\nV M1,A,BR1 1AA\n").unwrap_err();
        assert!(err.contains("not an ODS code"), "{err}");
    }
}
