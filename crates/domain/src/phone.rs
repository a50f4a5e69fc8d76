//! E.164 numbers. Parsed once with libphonenumber's metadata (the `phonenumber` crate's) so that
//! the core only ever sees a number that is valid for its country, in one canonical spelling.

mod rules;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct E164(String);

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a valid international phone number")]
pub struct InvalidPhone;

impl E164 {
    /// Accepts a number written with `+` and its country code; spaces, dashes, dots and
    /// parentheses between digits are tolerated because people paste numbers that way. A number
    /// without `+` is refused rather than guessed: guessing the country is how calls go to the
    /// wrong person.
    pub fn parse(input: &str) -> Result<Self, InvalidPhone> {
        let s = input.trim();
        if !s.starts_with('+') || s.len() > 32 {
            return Err(InvalidPhone);
        }
        if !s[1..]
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, ' ' | '-' | '.' | '(' | ')'))
        {
            return Err(InvalidPhone);
        }
        let digits: String = s[1..].chars().filter(char::is_ascii_digit).collect();
        match rules::verdict(&digits) {
            rules::Verdict::Valid(e164) => Ok(Self(e164)),
            rules::Verdict::Invalid => Err(InvalidPhone),
            rules::Verdict::Unknown => reference_parse(&digits).map(Self),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// ISO 3166 region of the number (e.g. `IN`), used for the callee's local time.
    pub fn region(&self) -> Option<String> {
        let digits = self.0.trim_start_matches('+');
        match rules::region(digits) {
            Ok(region) => region.map(str::to_owned),
            Err(()) => reference_region(digits),
        }
    }

    /// For values read back from our own store, which only ever holds parsed numbers.
    pub fn from_trusted(s: String) -> Self {
        Self(s)
    }
}

/// The `phonenumber` crate's own parse, validation and E.164 spelling of `+<digits>`: what
/// `rules` must agree with, and the answer for a country code whose patterns `rules` could not
/// compile. Given the digits alone because the crate reads the digits before a first `-`, `.`,
/// `(` or `)` of a number without spaces as its country code (RFC 3966 style), so it refuses
/// `+9198765-43210` while taking `+91 98765-43210`; the digits after a `+` are one unambiguous
/// international number however they are grouped, so we read them that way.
fn reference_parse(digits: &str) -> Result<String, InvalidPhone> {
    let parsed = phonenumber::parse(None, format!("+{digits}")).map_err(|_| InvalidPhone)?;
    if !phonenumber::is_valid(&parsed) {
        return Err(InvalidPhone);
    }
    Ok(parsed.format().mode(phonenumber::Mode::E164).to_string())
}

fn reference_region(digits: &str) -> Option<String> {
    let parsed = phonenumber::parse(None, format!("+{digits}")).ok()?;
    parsed.country().id().map(|id| format!("{id:?}"))
}

impl fmt::Display for E164 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for E164 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// Read through [`E164::parse`]: a stored or configured number is checked like any other.
impl<'de> Deserialize<'de> for E164 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        E164::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn canonical_forms() {
        assert_eq!(
            E164::parse("+919876543210").unwrap().as_str(),
            "+919876543210"
        );
        assert_eq!(
            E164::parse(" +1 (415) 555-2671 ").unwrap().as_str(),
            "+14155552671"
        );
        assert_eq!(
            E164::parse("+44 20 7946 0958").unwrap().as_str(),
            "+442079460958"
        );
        assert_eq!(
            E164::parse("+919876543210").unwrap().region().as_deref(),
            Some("IN")
        );
        // However the digits after `+` are grouped, they are one number (the `phonenumber`
        // crate alone would read `9198765` as a country code here and refuse it).
        assert_eq!(
            E164::parse("+9198765-43210").unwrap().as_str(),
            "+919876543210"
        );
        assert_eq!(
            E164::parse("+1 (415) 555-2671")
                .unwrap()
                .region()
                .as_deref(),
            Some("US")
        );
        assert_eq!(E164::parse("+80012345678").unwrap().region(), None);
    }

    #[test]
    fn refuses_what_cannot_be_dialled_safely() {
        for bad in [
            "",
            "+",
            "919876543210",
            "09876543210",
            "+91",
            "+91987654321098765",
            "+1 415 555 267",
            "+999123456789",
            "+91abc9876543",
            "++919876543210",
            "+91 98765 43210 ext 5",
            "tel:+919876543210",
        ] {
            assert_eq!(E164::parse(bad), Err(InvalidPhone), "{bad:?} was accepted");
        }
    }

    proptest! {
        #[test]
        fn never_panics(s in ".{0,40}") {
            let _ = E164::parse(&s);
        }

        #[test]
        fn parse_is_idempotent_on_its_output(digits in "[1-9][0-9]{6,14}") {
            if let Ok(n) = E164::parse(&format!("+{digits}")) {
                prop_assert_eq!(E164::parse(n.as_str()), Ok(n.clone()));
                prop_assert!(n.as_str().starts_with('+'));
                prop_assert!(n.as_str()[1..].chars().all(|c| c.is_ascii_digit()));
                prop_assert!(n.as_str().len() <= 16);
            }
        }

        #[test]
        fn numbers_without_plus_are_refused(digits in "[0-9]{5,15}") {
            prop_assert_eq!(E164::parse(&digits), Err(InvalidPhone));
        }

        #[test]
        fn separators_do_not_change_the_number(a in "[2-9][0-9]{2}", b in "[0-9]{3}", c in "[0-9]{4}") {
            let plain = E164::parse(&format!("+1{a}{b}{c}"));
            let spaced = E164::parse(&format!("+1 ({a}) {b}-{c}"));
            prop_assert_eq!(plain, spaced);
        }
    }
}
