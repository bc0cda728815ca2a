//! `--history PREFIX=SIZE,TTL`: which groups keep a history, and how much.

use std::str::FromStr;
use std::time::Duration;

use crate::bus::HistoryPolicy;

pub use protocol::history::MAX_HISTORY_SIZE;
/// Longest history TTL.
pub const MAX_HISTORY_TTL: Duration = Duration::from_secs(30 * 24 * 60 * 60);

/// One `--history` rule: groups whose id starts with `prefix` keep their last `size` messages,
/// each for at most `ttl`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryRule {
    pub prefix: String,
    pub policy: HistoryPolicy,
}

impl FromStr for HistoryRule {
    type Err = String;

    /// `PREFIX=SIZE,TTL`, e.g. `chat:=100,10m` (an empty prefix: every group).
    fn from_str(text: &str) -> Result<HistoryRule, String> {
        const FORM: &str = "expected PREFIX=SIZE,TTL, e.g. 'chat:=100,10m' (the last 100 messages of groups starting with 'chat:', each kept 10 minutes)";
        let (prefix, rest) = text.rsplit_once('=').ok_or(FORM)?;
        let (size, ttl) = rest.split_once(',').ok_or(FORM)?;
        let size: u32 = size
            .trim()
            .parse()
            .map_err(|_| format!("history size {size:?} is not a number: {FORM}"))?;
        if size == 0 || size > MAX_HISTORY_SIZE {
            return Err(format!(
                "history size must be between 1 and {MAX_HISTORY_SIZE} messages"
            ));
        }
        let ttl = humantime::parse_duration(ttl.trim())
            .map_err(|e| format!("history TTL {ttl:?}: {e}: {FORM}"))?;
        if ttl < Duration::from_secs(1) || ttl > MAX_HISTORY_TTL {
            return Err("history TTL must be between 1s and 30 days".into());
        }
        Ok(HistoryRule {
            prefix: prefix.to_owned(),
            policy: HistoryPolicy { size, ttl },
        })
    }
}

/// Every `--history` rule, longest prefix first: a group takes the first that matches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistoryRules(Vec<HistoryRule>);

impl HistoryRules {
    pub fn new(rules: &[HistoryRule]) -> HistoryRules {
        let mut rules = rules.to_vec();
        // Stable: of two rules with the same prefix, the later one (as given) wins below.
        rules.reverse();
        rules.sort_by_key(|rule| std::cmp::Reverse(rule.prefix.len()));
        rules.dedup_by(|later, earlier| later.prefix == earlier.prefix);
        HistoryRules(rules)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The history `group` keeps, if any.
    pub fn policy(&self, group: &str) -> Option<HistoryPolicy> {
        if self.0.is_empty() {
            return None;
        }
        self.0
            .iter()
            .find(|rule| group.starts_with(&rule.prefix))
            .map(|rule| rule.policy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(text: &str) -> HistoryRule {
        text.parse().expect("valid rule")
    }

    #[test]
    fn rules_parse_and_the_longest_prefix_wins() {
        let chat = rule("chat:=100,10m");
        assert_eq!(chat.prefix, "chat:");
        assert_eq!(
            chat.policy,
            HistoryPolicy {
                size: 100,
                ttl: Duration::from_secs(600)
            }
        );
        let rules = HistoryRules::new(&[rule("=5,1h"), chat, rule("chat:vip=1000,1d")]);
        assert_eq!(rules.policy("chat:1").map(|p| p.size), Some(100));
        assert_eq!(rules.policy("chat:vip1").map(|p| p.size), Some(1000));
        assert_eq!(rules.policy("news").map(|p| p.size), Some(5));
        assert_eq!(HistoryRules::new(&[rule("a=1,1s")]).policy("b"), None);
        let later = HistoryRules::new(&[rule("a=1,1s"), rule("a=2,1s")]);
        assert_eq!(later.policy("a").map(|p| p.size), Some(2));
    }

    #[test]
    fn bad_rules_say_what_is_expected() {
        for bad in [
            "chat:",
            "chat:=x,1m",
            "chat:=0,1m",
            "chat:=10",
            "chat:=10,forever",
            "chat:=10,10ms",
        ] {
            let e = bad.parse::<HistoryRule>().expect_err(bad);
            assert!(e.contains("history") || e.contains("PREFIX"), "{bad}: {e}");
        }
    }
}
