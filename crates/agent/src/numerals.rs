//! Numbers as words, so that a route's "five hundred" or "fifteenth" matches a recogniser that
//! writes "500" or "15th" (Whisper does; pocketsphinx and Deepgram's default spell them out or
//! not depending on the model). English words only: the contract's route phrases in other
//! languages are matched as written.

const ONES: [&str; 20] = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
];
const TENS: [&str; 10] = [
    "", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety",
];
const SCALES: [(u64, &str); 3] = [
    (1_000_000_000, "billion"),
    (1_000_000, "million"),
    (1_000, "thousand"),
];

/// The words of a token that is a whole number ("500", "2000") or an ordinal ("15th", "1st"):
/// `None` for anything else, and for numbers too long to be an amount or a date (over 12
/// digits: an account or phone number is read out digit by digit, not as a quantity).
pub fn spelled(token: &str) -> Option<Vec<String>> {
    let (digits, ordinal) = match token
        .strip_suffix("st")
        .or_else(|| token.strip_suffix("nd"))
        .or_else(|| token.strip_suffix("rd"))
        .or_else(|| token.strip_suffix("th"))
    {
        Some(d) => (d, true),
        None => (token, false),
    };
    if digits.is_empty() || digits.len() > 12 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    let mut words = Vec::new();
    cardinal(n, &mut words);
    if ordinal {
        if let Some(last) = words.last_mut() {
            *last = ordinal_of(last);
        }
    }
    Some(words.into_iter().map(String::from).collect())
}

fn cardinal(n: u64, out: &mut Vec<&'static str>) {
    if n == 0 {
        out.push(ONES[0]);
        return;
    }
    let mut rest = n;
    for (scale, name) in SCALES {
        if rest >= scale {
            below_thousand(rest / scale, out);
            out.push(name);
            rest %= scale;
        }
    }
    if rest > 0 {
        below_thousand(rest, out);
    }
}

fn below_thousand(n: u64, out: &mut Vec<&'static str>) {
    let (hundreds, rest) = (n / 100, n % 100);
    if hundreds > 0 {
        out.push(ONES[hundreds as usize]);
        out.push("hundred");
    }
    if rest >= 20 {
        out.push(TENS[(rest / 10) as usize]);
        if rest % 10 > 0 {
            out.push(ONES[(rest % 10) as usize]);
        }
    } else if rest > 0 {
        out.push(ONES[rest as usize]);
    }
}

fn ordinal_of(word: &'static str) -> &'static str {
    match word {
        "one" => "first",
        "two" => "second",
        "three" => "third",
        "four" => "fourth",
        "five" => "fifth",
        "six" => "sixth",
        "seven" => "seventh",
        "eight" => "eighth",
        "nine" => "ninth",
        "ten" => "tenth",
        "eleven" => "eleventh",
        "twelve" => "twelfth",
        "thirteen" => "thirteenth",
        "fourteen" => "fourteenth",
        "fifteen" => "fifteenth",
        "sixteen" => "sixteenth",
        "seventeen" => "seventeenth",
        "eighteen" => "eighteenth",
        "nineteen" => "nineteenth",
        "twenty" => "twentieth",
        "thirty" => "thirtieth",
        "forty" => "fortieth",
        "fifty" => "fiftieth",
        "sixty" => "sixtieth",
        "seventy" => "seventieth",
        "eighty" => "eightieth",
        "ninety" => "ninetieth",
        "hundred" => "hundredth",
        "thousand" => "thousandth",
        "million" => "millionth",
        "billion" => "billionth",
        "zero" => "zeroth",
        // `cardinal` ends on none other.
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn said(t: &str) -> Option<String> {
        spelled(t).map(|w| w.join(" "))
    }

    #[test]
    fn amounts_and_dates_are_spelled_as_a_caller_says_them() {
        assert_eq!(said("500").as_deref(), Some("five hundred"));
        assert_eq!(said("2000").as_deref(), Some("two thousand"));
        assert_eq!(said("15th").as_deref(), Some("fifteenth"));
        assert_eq!(said("1st").as_deref(), Some("first"));
        assert_eq!(said("22nd").as_deref(), Some("twenty second"));
        assert_eq!(said("30th").as_deref(), Some("thirtieth"));
        assert_eq!(said("0").as_deref(), Some("zero"));
        assert_eq!(
            said("1250075").as_deref(),
            Some("one million two hundred fifty thousand seventy five")
        );
        assert_eq!(said("100th").as_deref(), Some("one hundredth"));
    }

    #[test]
    fn words_and_long_digit_strings_are_left_alone() {
        assert_eq!(said("friday"), None);
        assert_eq!(said("th"), None);
        assert_eq!(said("5pm"), None);
        assert_eq!(said("9876543210987"), None);
    }
}
