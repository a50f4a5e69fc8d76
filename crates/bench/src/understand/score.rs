//! Scoring: word error rate and the intent confusion matrix of one engine.

use super::corpus::Intent;
use std::collections::BTreeMap;

/// Word-level edit distance (substitutions, deletions, insertions) between two word lists.
pub fn word_errors(reference: &[String], heard: &[String]) -> usize {
    let mut prev: Vec<usize> = (0..=heard.len()).collect();
    for (i, r) in reference.iter().enumerate() {
        let mut row = vec![i + 1; heard.len() + 1];
        for (j, h) in heard.iter().enumerate() {
            let sub = prev[j] + usize::from(r != h);
            row[j + 1] = sub.min(prev[j + 1] + 1).min(row[j] + 1);
        }
        prev = row;
    }
    prev[heard.len()]
}

/// One engine's tally.
#[derive(Debug, Default)]
pub struct Tally {
    /// (expected, got) -> count.
    pub confusion: BTreeMap<(Intent, Intent), usize>,
    pub word_errors: usize,
    pub reference_words: usize,
    /// Words heard where nothing was said (silence, the cough).
    pub phantom_words: usize,
    /// Replies the brain re-asked because the recogniser's confidence was low.
    pub doubtful: usize,
    /// Replies matching a yes-route and a no-route at once.
    pub conflicts: usize,
    /// Yes or no resting on "can"/"can't" or "will"/"won't" alone (asked again).
    pub hinges: usize,
    pub failures: usize,
}

impl Tally {
    pub fn add(&mut self, expected: Intent, got: Intent) {
        *self.confusion.entry((expected, got)).or_default() += 1;
    }

    pub fn total(&self) -> usize {
        self.confusion.values().sum()
    }

    pub fn correct(&self) -> usize {
        self.confusion
            .iter()
            .filter(|((e, g), _)| e == g)
            .map(|(_, n)| n)
            .sum()
    }

    /// A yes recorded as a no or a no as a yes.
    pub fn opposite(&self) -> usize {
        self.confusion
            .iter()
            .filter(|((e, g), _)| e.opposite(*g))
            .map(|(_, n)| n)
            .sum()
    }

    /// Anything recorded that is not what was meant (asking again is not counted).
    pub fn wrong_results(&self) -> usize {
        self.confusion
            .iter()
            .filter(|((e, g), _)| e != g && *g != Intent::Unclear)
            .map(|(_, n)| n)
            .sum()
    }

    pub fn wer(&self) -> Option<f64> {
        (self.reference_words > 0).then(|| self.word_errors as f64 / self.reference_words as f64)
    }

    /// The matrix as text: one row per expected intent, one column per outcome.
    pub fn matrix(&self) -> String {
        let short = |i: Intent| match i {
            Intent::Unclear => "re-ask".to_string(),
            other => other.name().chars().take(12).collect(),
        };
        let mut s = format!("{:<18}", "expected \\ got");
        for g in Intent::ALL {
            s.push_str(&format!("{:>13}", short(g)));
        }
        s.push('\n');
        for e in Intent::ALL {
            if !self.confusion.keys().any(|(x, _)| *x == e) {
                continue;
            }
            s.push_str(&format!("{:<18}", e.name()));
            for g in Intent::ALL {
                let n = self.confusion.get(&(e, g)).copied().unwrap_or(0);
                s.push_str(&format!("{n:>13}"));
            }
            s.push('\n');
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn word_errors_count_each_edit_once() {
        assert_eq!(word_errors(&w("yes i can pay"), &w("yes i can pay")), 0);
        assert_eq!(word_errors(&w("yes i can pay"), &w("yes i cannot pay")), 1);
        assert_eq!(word_errors(&w("yes i can pay"), &w("i can pay")), 1);
        assert_eq!(word_errors(&w("yes"), &w("the i on yes it")), 4);
        assert_eq!(word_errors(&w(""), &w("a b")), 2);
    }

    #[test]
    fn a_yes_recorded_as_refused_counts_as_opposite_and_a_re_ask_does_not() {
        let mut t = Tally::default();
        t.add(Intent::Promise, Intent::Refused);
        t.add(Intent::Promise, Intent::Unclear);
        t.add(Intent::Refused, Intent::Refused);
        t.add(Intent::Callback, Intent::Promise);
        assert_eq!(
            (t.total(), t.correct(), t.opposite(), t.wrong_results()),
            (4, 1, 1, 2)
        );
        assert!(t.matrix().contains("payment_promise"));
    }
}
