//! One row of a risk list, read into checked values: the NHS number
//! normalised and Modulus 11 checked, dates in the formats GP systems export
//! (impossible ones refused, never guessed), gender, eFI score and category.
//! Every problem names its row and column.

use super::layout::{Field, Layout};
use serde::Serialize;

/// A row read and checked.
#[derive(Debug, Clone, PartialEq)]
pub struct RiskRow {
    /// Line number in the file (1-based), as a practice would find it.
    pub row: u64,
    pub nhs_number: String,
    pub family_name: Option<String>,
    pub given_names: Vec<String>,
    /// ISO `YYYY-MM-DD`.
    pub birth_date: Option<String>,
    /// FHIR administrative gender.
    pub gender: Option<&'static str>,
    pub postcode: Option<String>,
    pub usual_gp: Option<String>,
    pub efi_score: Option<f64>,
    /// `fit`, `mild`, `moderate` or `severe`.
    pub efi_category: Option<&'static str>,
}

/// What is wrong with a row: where, and why in plain words.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RowError {
    pub row: u64,
    /// The column's header as written in the file (or the field name when
    /// the column is missing altogether).
    pub column: String,
    pub reason: String,
}

/// Reads a record; `Err` holds every problem of the row, not just the first.
pub fn read_row(row: u64, record: &[String], layout: &Layout) -> Result<RiskRow, Vec<RowError>> {
    let mut errors = Vec::new();
    let cell = |field: Field| -> Option<(&str, &str)> {
        let (index, header) = layout.column(field)?;
        let value = record.get(index).map(|v| v.trim()).unwrap_or("");
        (!value.is_empty()).then_some((value, header))
    };
    let mut fail = |field: Field, reason: String| {
        let column = layout
            .column(field)
            .map(|(_, h)| h.to_string())
            .unwrap_or_else(|| field.key().to_string());
        errors.push(RowError {
            row,
            column,
            reason,
        });
    };

    let nhs_number = match cell(Field::NhsNumber) {
        None => {
            fail(Field::NhsNumber, "the NHS number is missing".to_string());
            String::new()
        }
        Some((raw, _)) => match normalise_nhs_number(raw) {
            Ok(n) => n,
            Err(reason) => {
                fail(Field::NhsNumber, reason);
                String::new()
            }
        },
    };
    let birth_date = match cell(Field::BirthDate) {
        None => None,
        Some((raw, _)) => match parse_date(raw) {
            // ISO dates compare as text.
            Ok(d) if d > today() => {
                fail(Field::BirthDate, format!("{raw:?} is in the future"));
                None
            }
            Ok(d) => Some(d),
            Err(reason) => {
                fail(Field::BirthDate, reason);
                None
            }
        },
    };
    let gender = match cell(Field::Gender) {
        None => None,
        Some((raw, _)) => match parse_gender(raw) {
            Some(g) => Some(g),
            None => {
                fail(
                    Field::Gender,
                    format!(
                        "{raw:?} is not a gender this list format uses (M, F, U, I, Male, Female, Unknown, Indeterminate, Other)"
                    ),
                );
                None
            }
        },
    };
    let efi_score = match cell(Field::EfiScore) {
        None => None,
        // A fraction (0.36), or a percentage (36%).
        Some((raw, _)) => match raw.strip_suffix('%').map_or_else(
            || raw.parse::<f64>(),
            |p| p.trim().parse::<f64>().map(|v| v / 100.0),
        ) {
            Ok(v) if (0.0..=1.0).contains(&v) => Some(v),
            _ => {
                fail(
                    Field::EfiScore,
                    format!("{raw:?} is not an eFI score (a number from 0 to 1, or a percentage)"),
                );
                None
            }
        },
    };
    let efi_category = match cell(Field::EfiCategory) {
        None => None,
        Some((raw, _)) => match parse_category(raw) {
            Some(c) => Some(c),
            None => {
                fail(
                    Field::EfiCategory,
                    format!("{raw:?} is not an eFI category (fit, mild, moderate or severe)"),
                );
                None
            }
        },
    };
    let postcode = match cell(Field::Postcode) {
        None => None,
        Some((raw, _)) => match normalise_postcode(raw) {
            Some(p) => Some(p),
            None => {
                fail(
                    Field::Postcode,
                    format!("{raw:?} is not a postcode (letters and digits, such as BR1 3PT)"),
                );
                None
            }
        },
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(RiskRow {
        row,
        nhs_number,
        family_name: cell(Field::FamilyName).map(|(v, _)| v.to_string()),
        given_names: cell(Field::GivenNames)
            .map(|(v, _)| v.split_whitespace().map(str::to_string).collect())
            .unwrap_or_default(),
        birth_date,
        gender,
        postcode,
        usual_gp: cell(Field::UsualGp).map(|(v, _)| v.to_string()),
        efi_score,
        efi_category,
    })
}

/// `943 476 5919` → `9434765919`, if it is 10 digits with a valid Modulus 11
/// check digit.
pub fn normalise_nhs_number(raw: &str) -> Result<String, String> {
    let digits: String = raw
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .collect();
    if digits.len() != 10 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{raw:?} is not an NHS number (10 digits)"));
    }
    if !crate::fhir::is_nhs_number(&digits) {
        return Err(format!("{raw:?} fails the NHS number Modulus 11 check"));
    }
    Ok(digits)
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];

/// `05-Mar-2024`, `05/03/2024` (day first: these are UK exports),
/// `05 Mar 2024` or `2024-03-05` → `2024-03-05`. Impossible dates are refused.
pub fn parse_date(raw: &str) -> Result<String, String> {
    let refuse = || {
        Err(format!(
            "{raw:?} is not a date in a format GP exports use (dd-MMM-yyyy, dd/MM/yyyy, dd MMM yyyy or yyyy-MM-dd)"
        ))
    };
    let parts: Vec<&str> = raw
        .split(['-', '/', ' '])
        .filter(|p| !p.is_empty())
        .collect();
    let [a, b, c] = parts.as_slice() else {
        return refuse();
    };
    let (year, month, day) = if a.len() == 4 && raw.contains('-') {
        (a, b.to_string(), c)
    } else {
        let month = month_number(b).map_or_else(|| b.to_string(), |m| format!("{m:02}"));
        (c, month, a)
    };
    let (Ok(y), Ok(m), Ok(d)) = (
        year.parse::<u32>(),
        month.parse::<u32>(),
        day.parse::<u32>(),
    ) else {
        return refuse();
    };
    if year.len() != 4 || !(1..=12).contains(&m) || d == 0 || d > days_in_month(y, m) || y < 1850 {
        return Err(format!("{raw:?} is not a real date"));
    }
    Ok(format!("{y:04}-{m:02}-{d:02}"))
}

/// `Mar` or `March` → 3.
fn month_number(name: &str) -> Option<usize> {
    const FULL: [&str; 12] = [
        "january",
        "february",
        "march",
        "april",
        "may",
        "june",
        "july",
        "august",
        "september",
        "october",
        "november",
        "december",
    ];
    if name.eq_ignore_ascii_case("sept") {
        return Some(9);
    }
    MONTHS
        .iter()
        .position(|m| m.eq_ignore_ascii_case(name))
        .or_else(|| FULL.iter().position(|m| m.eq_ignore_ascii_case(name)))
        .map(|i| i + 1)
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400)) => {
            29
        }
        2 => 28,
        _ => 31,
    }
}

fn parse_gender(raw: &str) -> Option<&'static str> {
    match raw.to_ascii_lowercase().as_str() {
        "m" | "male" => Some("male"),
        "f" | "female" => Some("female"),
        "u" | "unknown" | "not known" | "not stated" => Some("unknown"),
        "i" | "indeterminate" | "o" | "other" => Some("other"),
        _ => None,
    }
}

fn parse_category(raw: &str) -> Option<&'static str> {
    let lower = raw.to_ascii_lowercase();
    ["fit", "mild", "moderate", "severe"]
        .into_iter()
        .find(|c| lower == *c || lower.starts_with(&format!("{c} ")))
}

/// `br13pt` → `BR1 3PT`: upper case, one space before the inward code;
/// `None` unless it is letters and digits only.
fn normalise_postcode(raw: &str) -> Option<String> {
    let compact: String = raw
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_ascii_uppercase();
    if !compact.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return None;
    }
    Some(if compact.len() > 3 {
        let (outward, inward) = compact.split_at(compact.len() - 3);
        format!("{outward} {inward}")
    } else {
        compact
    })
}

/// Today's date in England, as `yyyy-MM-dd`.
fn today() -> String {
    jiff::Zoned::now()
        .with_time_zone(crate::fhir::datetime::home_zone().clone())
        .date()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nhs_numbers_are_normalised_and_checked() {
        assert_eq!(normalise_nhs_number("943 476 5919").unwrap(), "9434765919");
        assert_eq!(normalise_nhs_number("400-000-0020").unwrap(), "4000000020");
        assert!(
            normalise_nhs_number("943 476 5918")
                .unwrap_err()
                .contains("Modulus 11")
        );
        assert!(
            normalise_nhs_number("94347659")
                .unwrap_err()
                .contains("10 digits")
        );
        // 0000000060: its check value would be 10, so no such number exists.
        assert!(normalise_nhs_number("0000000060").is_err());
    }

    #[test]
    fn dates_in_every_export_format_and_no_impossible_ones() {
        for (raw, iso) in [
            ("05-Mar-1938", "1938-03-05"),
            ("05/03/1938", "1938-03-05"),
            ("5 Mar 1938", "1938-03-05"),
            ("05 March 1938", "1938-03-05"),
            ("1938-03-05", "1938-03-05"),
            ("29-Feb-1940", "1940-02-29"),
        ] {
            assert_eq!(parse_date(raw).unwrap(), iso, "{raw}");
        }
        for raw in [
            "30-Feb-1940",
            "29/02/1941",
            "03/13/1940",
            "1940-13-01",
            "05-Mrz-1938",
            "05/03/38",
            "yesterday",
            "",
        ] {
            assert!(parse_date(raw).is_err(), "{raw}");
        }
    }

    #[test]
    fn postcodes_and_genders() {
        assert_eq!(normalise_postcode("br13pt").unwrap(), "BR1 3PT");
        assert_eq!(normalise_postcode("SE1  9RT").unwrap(), "SE1 9RT");
        // Not a postcode: refused, never split inside a character.
        assert_eq!(normalise_postcode("BR1 £PT"), None);
        assert_eq!(normalise_postcode("BR1-3PT"), None);
        assert_eq!(parse_gender("F"), Some("female"));
        assert_eq!(parse_gender("Indeterminate"), Some("other"));
        assert_eq!(parse_gender("x"), None);
        assert_eq!(parse_category("Severe frailty"), Some("severe"));
        assert_eq!(parse_category("SEVERE"), Some("severe"));
    }
}
