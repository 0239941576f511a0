//! Which column holds what: the fields a risk list carries, the header names
//! EMIS Web and SystmOne reports use for them, the documented generic
//! layout, and the header row found among whatever lines precede it.

use std::collections::HashMap;

/// A field of a risk-list row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Field {
    NhsNumber,
    FamilyName,
    GivenNames,
    BirthDate,
    Gender,
    Postcode,
    UsualGp,
    EfiScore,
    EfiCategory,
}

impl Field {
    pub const ALL: [Field; 9] = [
        Field::NhsNumber,
        Field::FamilyName,
        Field::GivenNames,
        Field::BirthDate,
        Field::Gender,
        Field::Postcode,
        Field::UsualGp,
        Field::EfiScore,
        Field::EfiCategory,
    ];

    /// The name in the generic layout and in configuration.
    pub fn key(self) -> &'static str {
        match self {
            Field::NhsNumber => "nhs_number",
            Field::FamilyName => "family_name",
            Field::GivenNames => "given_names",
            Field::BirthDate => "birth_date",
            Field::Gender => "gender",
            Field::Postcode => "postcode",
            Field::UsualGp => "usual_gp",
            Field::EfiScore => "efi_score",
            Field::EfiCategory => "efi_category",
        }
    }

    pub fn from_key(key: &str) -> Option<Field> {
        Field::ALL.into_iter().find(|f| f.key() == key)
    }

    /// Header names the exports use, compared after [`normalise_header`].
    /// The generic layout takes only its documented names.
    fn aliases(self, format: Format) -> &'static [&'static str] {
        if format == Format::Generic {
            return match self {
                Field::NhsNumber => &["nhs_number"],
                Field::FamilyName => &["family_name"],
                Field::GivenNames => &["given_names"],
                Field::BirthDate => &["birth_date"],
                Field::Gender => &["gender"],
                Field::Postcode => &["postcode"],
                Field::UsualGp => &["usual_gp"],
                Field::EfiScore => &["efi_score"],
                Field::EfiCategory => &["efi_category"],
            };
        }
        match self {
            Field::NhsNumber => &["nhs number", "nhs no", "nhs no.", "nhsnumber"],
            Field::FamilyName => &["surname", "family name", "last name"],
            Field::GivenNames => &[
                "forename",
                "forename(s)",
                "forenames",
                "first name",
                "given name",
                "given names",
            ],
            Field::BirthDate => &["date of birth", "dob", "birth date"],
            Field::Gender => &["gender", "sex"],
            Field::Postcode => &["postcode", "post code", "postal code"],
            Field::UsualGp => &["usual gp", "registered gp"],
            Field::EfiScore => &[
                "efi score",
                "efi",
                "electronic frailty index",
                "frailty index",
                "efi value",
            ],
            Field::EfiCategory => &["efi category", "frailty category", "efi band", "frailty"],
        }
    }
}

/// Headers only one system's exports use, to tell them apart when the
/// common names match both.
fn signature(format: Format) -> &'static [&'static str] {
    match format {
        Format::Emis => &["forename(s)", "usual gp", "sex", "registration date"],
        Format::SystmOne => &["patient reference no.", "given name", "date of birth"],
        Format::Generic => &[],
    }
}

/// Which export a list comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Emis,
    SystmOne,
    Generic,
}

impl Format {
    pub fn parse(name: &str) -> Option<Format> {
        match name.to_ascii_lowercase().as_str() {
            "emis" => Some(Format::Emis),
            "systmone" => Some(Format::SystmOne),
            "generic" => Some(Format::Generic),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Format::Emis => "emis",
            Format::SystmOne => "systmone",
            Format::Generic => "generic",
        }
    }
}

/// Header names set in configuration for one source, taking precedence over
/// the presets: field → header as written in that source's export.
pub type Overrides = HashMap<Field, String>;

/// The columns of a list, once its header row is found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub format: Format,
    /// Field → (column index, header as written).
    columns: Vec<(Field, usize, String)>,
}

impl Layout {
    pub fn column(&self, field: Field) -> Option<(usize, &str)> {
        self.columns
            .iter()
            .find(|(f, _, _)| *f == field)
            .map(|(_, i, h)| (*i, h.as_str()))
    }

    /// Recognises `header` as the header row of a list: the NHS number column
    /// and at least one other field must be there. `format` restricts the
    /// presets tried (otherwise EMIS, then SystmOne, then generic).
    pub fn recognise(
        header: &[String],
        format: Option<Format>,
        overrides: &Overrides,
    ) -> Option<Layout> {
        let formats: &[Format] = match format {
            Some(Format::Emis) => &[Format::Emis],
            Some(Format::SystmOne) => &[Format::SystmOne],
            Some(Format::Generic) => &[Format::Generic],
            None => &[Format::Emis, Format::SystmOne, Format::Generic],
        };
        let names: Vec<String> = header.iter().map(|h| normalise_header(h)).collect();
        let mut best: Option<(usize, Layout)> = None;
        for &format in formats {
            let mut columns = Vec::new();
            for field in Field::ALL {
                let wanted: Vec<String> = match overrides.get(&field) {
                    Some(name) => vec![normalise_header(name)],
                    None => field
                        .aliases(format)
                        .iter()
                        .map(|a| a.to_string())
                        .collect(),
                };
                if let Some(i) = names.iter().position(|n| wanted.contains(n)) {
                    columns.push((field, i, header[i].trim().to_string()));
                }
            }
            let has_nhs = columns.iter().any(|(f, _, _)| *f == Field::NhsNumber);
            let score = columns.len() * 10
                + signature(format)
                    .iter()
                    .filter(|s| names.iter().any(|n| n == *s))
                    .count();
            // Two known columns tell a header from a preamble line (a lone
            // `NHS Number` may be a report's caption); the generic layout's
            // own `nhs_number` alone is a header (a list of NHS numbers).
            let alone = format == Format::Generic
                && header
                    .iter()
                    .map(|h| h.trim())
                    .filter(|h| !h.is_empty())
                    .eq(["nhs_number"]);
            if has_nhs
                && (columns.len() >= 2 || alone)
                && best.as_ref().is_none_or(|(b, _)| score > *b)
            {
                best = Some((score, Layout { format, columns }));
            }
        }
        best.map(|(_, layout)| layout)
    }
}

/// Lower case, single spaces, no BOM or surrounding quotes/space.
pub fn normalise_header(raw: &str) -> String {
    raw.trim_start_matches('\u{feff}')
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_generic_nhs_number_column_alone_is_a_header() {
        let layout = Layout::recognise(&header(&["nhs_number"]), None, &Overrides::new()).unwrap();
        assert_eq!(layout.format, Format::Generic);
        assert_eq!(layout.column(Field::NhsNumber), Some((0, "nhs_number")));
        assert!(Layout::recognise(&header(&["Surname"]), None, &Overrides::new()).is_none());
    }

    #[test]
    fn recognises_emis_and_systmone_headers_by_name() {
        let emis = Layout::recognise(
            &header(&[
                "NHS Number",
                "Surname",
                "Forename(s)",
                "Date of Birth",
                "Sex",
                "eFI Score",
            ]),
            None,
            &Overrides::new(),
        )
        .unwrap();
        assert_eq!(emis.column(Field::GivenNames), Some((2, "Forename(s)")));
        assert_eq!(emis.column(Field::Gender), Some((4, "Sex")));
        let s1 = Layout::recognise(
            &header(&[
                "Patient reference no.",
                "NHS number",
                "Given name",
                "Surname",
                "Date of birth",
            ]),
            Some(Format::SystmOne),
            &Overrides::new(),
        )
        .unwrap();
        assert_eq!(s1.column(Field::NhsNumber), Some((1, "NHS number")));
        assert_eq!(s1.format, Format::SystmOne);
    }

    #[test]
    fn a_preamble_line_is_not_a_header() {
        assert!(
            Layout::recognise(
                &header(&["Report: Frailty register", "Run 05-Mar-2024"]),
                None,
                &Overrides::new()
            )
            .is_none()
        );
        assert!(Layout::recognise(&header(&["NHS Number"]), None, &Overrides::new()).is_none());
    }

    #[test]
    fn configured_header_names_win() {
        let overrides = Overrides::from([(Field::NhsNumber, "NHS No (10)".to_string())]);
        let layout =
            Layout::recognise(&header(&["NHS No (10)", "Surname"]), None, &overrides).unwrap();
        assert_eq!(layout.column(Field::NhsNumber), Some((0, "NHS No (10)")));
    }
}
