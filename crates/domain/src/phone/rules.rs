//! libphonenumber's answer for a number written `+<digits>`, on regexes compiled once.
//!
//! The `phonenumber` crate gives the right answer, but every pattern it tests goes through one
//! process-wide LRU cache of 100 regexes keyed by the pattern's text: each test hashes a pattern
//! of up to a few KiB under a mutex, 12-17 µs a number, and threads parsing at once queue on that
//! mutex. A 1,000,000-row batch spent most of its upload there. This module walks the same steps
//! as the crate's `parse` + `is_valid` + E.164 formatting for the one spelling we accept (a `+`,
//! digits and separators), reading the same metadata, with each pattern compiled once per
//! country code on first use. `tests::agrees_with_phonenumber` holds it to the crate's answers.

use phonenumber::metadata::{Descriptor, Metadata, DATABASE};
use regex::{Regex, RegexBuilder};
use std::collections::HashMap;
use std::sync::OnceLock;

/// The crate's limits on the national significant number and the country code.
const MIN_NSN: usize = 2;
const MAX_NSN: usize = 17;
const MAX_CODE_DIGITS: usize = 3;

/// What the crate's `parse` then `is_valid` would conclude.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Valid, in its E.164 spelling.
    Valid(String),
    Invalid,
    /// This code's patterns could not be compiled here; ask the crate.
    Unknown,
}

/// A descriptor's test: the crate checks the length list, then whether the pattern matches at the
/// start (`find` with `start == 0`), which is the same as an anchored match.
struct Desc {
    re: Regex,
    lengths: Vec<u16>,
}

impl Desc {
    fn new(d: &Descriptor) -> Result<Self, regex::Error> {
        Ok(Self {
            re: anchored(d.national_number().as_str())?,
            lengths: d.possible_length().to_vec(),
        })
    }

    fn is_match(&self, value: &str) -> bool {
        (self.lengths.is_empty() || self.lengths.contains(&(value.len() as u16)))
            && self.re.is_match(value)
    }
}

fn anchored(source: &str) -> Result<Regex, regex::Error> {
    RegexBuilder::new(&format!("^(?:{source})"))
        .ignore_whitespace(true)
        .build()
}

struct Region {
    id: &'static str,
    /// Whether the crate can name this region (`country::Id` parses); it gives up otherwise.
    named: bool,
    leading_digits: Option<Regex>,
    general: Desc,
    general_possible: Vec<u16>,
    general_local: Vec<u16>,
    /// Every type but "unknown": the crate's `number_type != Unknown` is "the general pattern and
    /// any one of these match".
    types: Vec<Desc>,
    national_prefix: Option<&'static str>,
    prefix_for_parsing: Option<Regex>,
    transform: Option<&'static str>,
}

impl Region {
    fn new(meta: &'static Metadata) -> Result<Self, regex::Error> {
        let d = meta.descriptors();
        let types = [
            d.premium_rate(),
            d.toll_free(),
            d.shared_cost(),
            d.voip(),
            d.personal_number(),
            d.pager(),
            d.uan(),
            d.voicemail(),
            d.fixed_line(),
            d.mobile(),
        ]
        .into_iter()
        .flatten()
        .map(Desc::new)
        .collect::<Result<_, _>>()?;
        Ok(Self {
            id: meta.id(),
            named: meta.id().parse::<phonenumber::country::Id>().is_ok(),
            leading_digits: meta
                .leading_digits()
                .map(|r| anchored(r.as_str()))
                .transpose()?,
            general: Desc::new(d.general())?,
            general_possible: d.general().possible_length().to_vec(),
            general_local: d.general().possible_local_length().to_vec(),
            types,
            national_prefix: meta.national_prefix(),
            prefix_for_parsing: meta
                .national_prefix_for_parsing()
                .map(|r| anchored(r.as_str()))
                .transpose()?,
            transform: meta.national_prefix_transform_rule(),
        })
    }

    fn has_type(&self, national: &str) -> bool {
        self.general.is_match(national) && self.types.iter().any(|t| t.is_match(national))
    }

    /// The crate's `helper::national_number` followed by `parse`'s second national-prefix strip
    /// and its length check: the national number as the crate keeps it.
    fn national_number(&self, national: String) -> String {
        let mut potential = self.strip_prefix_for_parsing(&national);
        if let Some(prefix) = self.national_prefix {
            if potential.starts_with(prefix) {
                potential.drain(..prefix.len());
            }
        }
        if self.too_short(potential.len()) {
            national
        } else {
            potential
        }
    }

    fn strip_prefix_for_parsing(&self, national: &str) -> String {
        let Some(parsing) = &self.prefix_for_parsing else {
            return match self.national_prefix {
                Some(prefix) if national.starts_with(prefix) => national[prefix.len()..].into(),
                _ => national.into(),
            };
        };
        let Some(caps) = parsing.captures(national) else {
            return national.into();
        };
        let end = caps.get(0).map_or(0, |m| m.end());
        let last = caps.get(caps.len() - 1);
        match self.transform {
            Some(transform) if last.is_some() => {
                let transformed = parsing.replace(national, transform).into_owned();
                if self.general.is_match(national) && !self.general.is_match(&transformed) {
                    national.into()
                } else {
                    transformed
                }
            }
            // The crate's test here is of the general pattern on the number from the match's
            // start, which is 0, so it never refuses the strip.
            _ => national[end..].into(),
        }
    }

    /// `validator::length(meta, number, Type::Unknown) == TooShort`.
    fn too_short(&self, len: usize) -> bool {
        let len = len as u16;
        match self.general_possible.first() {
            None => false,
            Some(&min) => !self.general_local.contains(&len) && len < min,
        }
    }
}

struct Code {
    code: u16,
    /// In the database's region order, as `validator::source_for` walks them.
    regions: Vec<Region>,
    /// A single non-geographic ("001") entry: `source_for` answers with the code's first entry.
    non_geographic: bool,
}

impl Code {
    /// `None` for a code without regions.
    fn new(code: u16) -> Result<Option<Self>, regex::Error> {
        let Some(ids) = DATABASE.region(&code) else {
            return Ok(None);
        };
        let non_geographic = ids.len() == 1 && ids[0] == "001";
        let metas: Vec<&'static Metadata> = if non_geographic {
            DATABASE
                .by_code(&code)
                .into_iter()
                .flatten()
                .take(1)
                .collect()
        } else {
            ids.iter().filter_map(|id| DATABASE.by_id(*id)).collect()
        };
        Ok(Some(Self {
            code,
            regions: metas
                .into_iter()
                .map(Region::new)
                .collect::<Result<_, _>>()?,
            non_geographic,
        }))
    }

    /// `validator::source_for`.
    fn source_for(&self, national: &str) -> Option<&Region> {
        if self.non_geographic {
            return self.regions.first();
        }
        if self.regions.len() == 1 {
            return self.regions.first().filter(|r| r.named);
        }
        self.regions.iter().find(|r| match &r.leading_digits {
            Some(leading) => leading.is_match(national),
            None => r.has_type(national),
        })
    }

    /// The crate's `parse` after the country code: the national number it keeps, or `None`
    /// where it refuses.
    fn national(&self, national: String) -> Option<String> {
        let national = match self.source_for(national.trim_start_matches('0')) {
            Some(region) => region.national_number(national),
            None => national,
        };
        // The crate stores the number as leading zeros + a 56-bit value.
        let value = national.trim_start_matches('0');
        let fits = !value.is_empty() && value.parse::<u64>().is_ok_and(|v| v < 1 << 56);
        ((MIN_NSN..=MAX_NSN).contains(&national.len()) && fits).then_some(national)
    }

    /// `is_valid` on the parsed number.
    fn is_valid(&self, national: &str) -> bool {
        self.source_for(national)
            .is_some_and(|region| region.has_type(national))
    }

    /// `Country::id`: looked up on the value without its leading zeros, valid or not.
    fn region(&self, national: &str) -> Option<&'static str> {
        self.source_for(national.trim_start_matches('0'))
            .filter(|r| r.named)
            .map(|r| r.id)
    }
}

type Codes = HashMap<u16, OnceLock<Option<Code>>>;

fn codes() -> &'static Codes {
    static CODES: OnceLock<Codes> = OnceLock::new();
    // Every code the database knows: `DATABASE.iter()` has one entry per region id, so it
    // would miss all but one of the non-geographic ("001") codes.
    CODES.get_or_init(|| {
        (1..1000)
            .filter(|c| DATABASE.by_code(c).is_some())
            .map(|c| (c, OnceLock::new()))
            .collect()
    })
}

/// The crate's country-code split of `digits` (every digit after the `+`, separators dropped):
/// the code's rules and the rest. `Err(())` where the crate refuses, `Ok(None)` where this
/// code's rules could not be compiled (never seen; the crate answers then).
fn split(digits: &str) -> Result<Option<(&'static Code, &str)>, ()> {
    if digits.len() <= MIN_NSN
        || digits.starts_with('0')
        || !digits.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(());
    }
    for len in 1..=MAX_CODE_DIGITS {
        let code = digits[..len].parse::<u16>().map_err(|_| ())?;
        if let Some(slot) = codes().get(&code) {
            let rules = slot.get_or_init(|| Code::new(code).ok().flatten());
            return Ok(rules.as_ref().map(|rules| (rules, &digits[len..])));
        }
    }
    Err(())
}

pub(super) fn verdict(digits: &str) -> Verdict {
    match split(digits) {
        Err(()) => Verdict::Invalid,
        Ok(None) => Verdict::Unknown,
        Ok(Some((code, rest))) => match code.national(rest.to_owned()) {
            Some(national) if code.is_valid(&national) => {
                Verdict::Valid(format!("+{}{national}", code.code))
            }
            _ => Verdict::Invalid,
        },
    }
}

/// The region the crate names for `digits`: `Ok(None)` where it names none, `Err(())` where
/// this code's rules could not be compiled.
pub(super) fn region(digits: &str) -> Result<Option<&'static str>, ()> {
    match split(digits) {
        Err(()) => Ok(None),
        Ok(None) => Err(()),
        Ok(Some((code, rest))) => Ok(code.national(rest.to_owned()).and_then(|n| code.region(&n))),
    }
}

#[cfg(test)]
mod tests {
    use super::super::{reference_parse, reference_region, InvalidPhone, E164};
    use phonenumber::metadata::DATABASE;
    use proptest::prelude::*;

    /// `E164::parse` and `region` answer exactly as the `phonenumber` crate does for the same
    /// digits.
    fn check(input: &str) -> Result<(), String> {
        let ours = E164::parse(input).map(|n| n.0);
        let s = input.trim();
        let spelled_ok = s.starts_with('+')
            && s.len() <= 32
            && s[1..]
                .chars()
                .all(|c| c.is_ascii_digit() || matches!(c, ' ' | '-' | '.' | '(' | ')'));
        let digits: String = s.chars().filter(char::is_ascii_digit).collect();
        let theirs = if spelled_ok {
            reference_parse(&digits)
        } else {
            Err(InvalidPhone)
        };
        if ours != theirs {
            return Err(format!("{input:?}: ours {ours:?}, the crate's {theirs:?}"));
        }
        for n in [ours.ok(), spelled_ok.then(|| format!("+{digits}"))]
            .into_iter()
            .flatten()
        {
            let theirs = reference_region(&n[1..]);
            let ours = E164::from_trusted(n.clone()).region();
            if ours != theirs {
                return Err(format!("{n}: region ours {ours:?}, the crate's {theirs:?}"));
            }
        }
        Ok(())
    }

    /// Every region's example numbers, of every type, and their near misses: a digit short, a
    /// digit long, each first digit, behind a national prefix, with separators. Tens of
    /// thousands of numbers across every pattern of the metadata.
    #[test]
    fn agrees_with_phonenumber() {
        let mut checked = 0;
        let mut valid = 0;
        let mut failures = Vec::new();
        for meta in DATABASE.iter() {
            let code = meta.country_code();
            let d = meta.descriptors();
            let examples = [
                Some(d.general()),
                d.fixed_line(),
                d.mobile(),
                d.toll_free(),
                d.premium_rate(),
                d.shared_cost(),
                d.personal_number(),
                d.voip(),
                d.pager(),
                d.uan(),
                d.voicemail(),
                d.no_international(),
            ]
            .into_iter()
            .flatten()
            .filter_map(|d| d.example().map(str::to_owned));
            for ex in examples {
                let mut variants = vec![
                    ex.clone(),
                    ex[..ex.len().saturating_sub(1)].to_owned(),
                    format!("{ex}7"),
                    format!("0{ex}"),
                    format!("{}{ex}", meta.national_prefix().unwrap_or("")),
                ];
                for first in '0'..='9' {
                    variants.push(format!("{first}{}", ex.get(1..).unwrap_or("")));
                }
                for v in variants {
                    for spelled in [
                        format!("+{code}{v}"),
                        format!("+{code} {v}"),
                        format!(" +{code}-({v}) "),
                    ] {
                        checked += 1;
                        match check(&spelled) {
                            Ok(()) => valid += E164::parse(&spelled).is_ok() as usize,
                            Err(e) => failures.push(e),
                        }
                    }
                }
            }
        }
        assert!(
            failures.is_empty(),
            "{} disagreements: {:#?}",
            failures.len(),
            &failures[..failures.len().min(20)]
        );
        // `cargo test -p domain agrees_with_phonenumber -- --nocapture` shows the corpus.
        eprintln!("{checked} inputs agree with the crate, {valid} of them valid");
        assert!(checked > 20_000, "{checked}");
        assert!(
            valid > 2_000,
            "only {valid} of {checked} valid: the corpus misses the point"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]
        #[test]
        fn agrees_on_random_numbers(code in 1u16..1000, national in "[0-9]{0,16}", sep in "[ ().-]{0,2}") {
            let input = format!("+{code}{sep}{national}");
            prop_assert!(check(&input).is_ok(), "{}", check(&input).unwrap_err());
        }

        #[test]
        fn agrees_on_busy_codes(code in prop::sample::select(vec![1u16, 7, 39, 44, 49, 52, 55, 61, 81, 86, 91, 234, 262, 590, 599, 800, 979]), national in "[0-9]{6,13}") {
            let input = format!("+{code}{national}");
            prop_assert!(check(&input).is_ok(), "{}", check(&input).unwrap_err());
        }
    }
}
