//! NATS subjects for groups: `{prefix}.g.{token}`, where the token is the group id made safe.
//!
//! A NATS subject is a list of tokens separated by `.`; `*` and `>` are wildcards, whitespace
//! ends the subject, and a token cannot be empty. A group id may hold any character, so it is
//! escaped into exactly one token of `[A-Za-z0-9_~-]`: the bytes `A-Z a-z 0-9 _ -` stand for
//! themselves, every other byte of its UTF-8 (`~` included) is written `~HH`, upper-case hex.
//! The mapping is injective (decoding it is unambiguous: `~` always opens an escape), so `a.b`
//! (`a~2Eb`) never meets `a` then `b`, no group is a wildcard, and the common ids (`room-42`)
//! stay readable in the server's monitoring.
//!
//! An escaped byte takes three characters: a group id of `n` bytes gives a token of at most
//! `3n`. NATS refuses a protocol line (`PUB subject size`, `SUB subject sid`) longer than its
//! `max_control_line`, 4096 bytes by default: [`fits_control_line`] says whether the longest
//! subject of a deployment fits.
//!
//! Groups with history (`--history`) also have subjects in a JetStream stream, one stream per
//! history policy ([`history_stream`]): `{prefix}.h.{size}.{ttl_ms}.m.{token}` holds the
//! group's messages, `{prefix}.h.{size}.{ttl_ms}.e.{token}` the epoch of a history read before
//! its first message ([`history_subjects`]). The policy is in the subject because a stream's
//! subjects may not overlap another's.

/// What every group subject has after the deployment's prefix.
pub const GROUP_INFIX: &str = ".g.";

/// A NATS server's default `max_control_line`, in bytes.
pub const MAX_CONTROL_LINE: usize = 4096;

/// The rest of the longest control line that holds a subject: the verb (`PUB `, `SUB `,
/// `MSG `), a subscription id, a reply subject-free size field, spaces and CRLF. 64 bytes is
/// more than the 38 they take at most.
pub const CONTROL_LINE_OVERHEAD: usize = 64;

/// What every history subject has after the deployment's prefix.
pub const HISTORY_INFIX: &str = ".h.";

/// The longest `{size}.{ttl_ms}.m.` of a history subject: 7 digits of size, 10 of
/// milliseconds (30 days), dots and the kind.
pub const HISTORY_POLICY_MAX_LEN: usize = 7 + 1 + 10 + 3;

/// What a JetStream publish adds to its control line beyond a plain publish's: the reply
/// inbox (`_INBOX.` and two 22-character tokens) and the header size field. 64 bytes is more
/// than the 62 they take.
pub const JETSTREAM_LINE_OVERHEAD: usize = 64;

/// The JetStream stream that keeps the histories of `policy`'s groups under `prefix`:
/// `{prefix}_history_{size}_{ttl_ms}` (a prefix is letters, digits, `_` and `-`: a valid
/// stream name).
pub fn history_stream(prefix: &str, size: u32, ttl_ms: u64) -> String {
    format!("{prefix}_history_{size}_{ttl_ms}")
}

/// The subjects of that stream, `{prefix}.h.{size}.{ttl_ms}.>`, and those of its messages that
/// the server republishes to the groups' subjects (`src` and `dest` of its `republish`):
/// `{prefix}.h.{size}.{ttl_ms}.m.*` to `{prefix}.g.{{wildcard(1)}}`.
pub fn history_stream_subjects(prefix: &str, size: u32, ttl_ms: u64) -> (String, String, String) {
    let base = format!("{prefix}{HISTORY_INFIX}{size}.{ttl_ms}");
    (
        format!("{base}.>"),
        format!("{base}.m.*"),
        format!("{prefix}{GROUP_INFIX}{{{{wildcard(1)}}}}"),
    )
}

/// The subjects of `group`'s history under `prefix` and its policy: its messages', its
/// epoch's, and a filter for both (to purge them).
pub fn history_subjects(prefix: &str, size: u32, ttl_ms: u64, group: &str) -> [String; 3] {
    let mut token = String::with_capacity(group.len());
    push_token(&mut token, group);
    let base = format!("{prefix}{HISTORY_INFIX}{size}.{ttl_ms}");
    [
        format!("{base}.m.{token}"),
        format!("{base}.e.{token}"),
        format!("{base}.*.{token}"),
    ]
}

/// Whether every history subject of group ids up to `max_group_id_len` bytes under `prefix`
/// fits in a default NATS control line, with a JetStream publish's reply inbox.
pub fn history_fits_control_line(prefix: &str, max_group_id_len: usize) -> bool {
    prefix.len()
        + HISTORY_INFIX.len()
        + HISTORY_POLICY_MAX_LEN
        + max_group_id_len.saturating_mul(3)
        + CONTROL_LINE_OVERHEAD
        + JETSTREAM_LINE_OVERHEAD
        <= MAX_CONTROL_LINE
}

/// The subject of `group` under `prefix` (`--bus-prefix`, already validated as a single token
/// of letters, digits, `_` and `-`).
pub fn group_subject(prefix: &str, group: &str) -> String {
    let mut subject = String::with_capacity(prefix.len() + GROUP_INFIX.len() + group.len());
    subject.push_str(prefix);
    subject.push_str(GROUP_INFIX);
    push_token(&mut subject, group);
    subject
}

/// Appends the token of `group` to `out`.
pub fn push_token(out: &mut String, group: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &byte in group.as_bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-' {
            out.push(char::from(byte));
        } else {
            out.push('~');
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0xF)]));
        }
    }
}

/// The longest subject a group id of `max_group_id_len` bytes can have under `prefix`.
pub fn max_subject_len(prefix: &str, max_group_id_len: usize) -> usize {
    prefix.len() + GROUP_INFIX.len() + max_group_id_len.saturating_mul(3)
}

/// The longest group id whose every subject fits a default NATS control line under `prefix`.
pub fn max_group_id_len(prefix: &str) -> usize {
    (MAX_CONTROL_LINE - CONTROL_LINE_OVERHEAD).saturating_sub(prefix.len() + GROUP_INFIX.len()) / 3
}

/// Whether every subject of group ids up to `max_group_id_len` bytes under `prefix` fits in a
/// default NATS control line.
pub fn fits_control_line(prefix: &str, max_group_id_len: usize) -> bool {
    max_subject_len(prefix, max_group_id_len) + CONTROL_LINE_OVERHEAD <= MAX_CONTROL_LINE
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The inverse of [`push_token`]: the group's bytes, or `None` for a text no group gives.
    fn decode_token(token: &str) -> Option<Vec<u8>> {
        let mut bytes = token.bytes();
        let mut out = Vec::new();
        while let Some(byte) = bytes.next() {
            if byte == b'~' {
                let hex = [bytes.next()?, bytes.next()?];
                let hex = std::str::from_utf8(&hex).ok()?;
                if hex.bytes().any(|b| b.is_ascii_lowercase()) {
                    return None;
                }
                out.push(u8::from_str_radix(hex, 16).ok()?);
            } else {
                out.push(byte);
            }
        }
        Some(out)
    }

    fn token(group: &str) -> String {
        let mut token = String::new();
        push_token(&mut token, group);
        token
    }

    /// What a NATS server accepts as one literal (non-wildcard) token of a subject.
    fn is_safe_token(token: &str) -> bool {
        !token.is_empty()
            && token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'~')
    }

    #[test]
    fn special_groups_get_distinct_single_tokens() {
        let groups = [
            "a.b", "a", "b", "a~2Eb", "*", ">", "a b", "{x}", "\t", ".", "..", "~", "é", "群组",
            "a\r\nb",
        ];
        let subjects: Vec<String> = groups.iter().map(|g| group_subject("gp", g)).collect();
        for (group, subject) in groups.iter().zip(&subjects) {
            let rest = subject.strip_prefix("gp.g.").expect("prefix and infix");
            assert!(is_safe_token(rest), "{group:?} -> {subject:?}");
            assert_eq!(decode_token(rest).as_deref(), Some(group.as_bytes()));
        }
        let distinct: std::collections::HashSet<_> = subjects.iter().collect();
        assert_eq!(distinct.len(), groups.len(), "{subjects:?}");
        assert_eq!(group_subject("gp", "room-42_b"), "gp.g.room-42_b");
        assert_eq!(group_subject("gp", "a.b"), "gp.g.a~2Eb");
        assert_eq!(group_subject("gp", "~"), "gp.g.~7E");
    }

    #[test]
    fn the_longest_subject_is_bounded() {
        let longest = "\u{7f}".repeat(256);
        assert_eq!(token(&longest).len(), 3 * 256);
        assert_eq!(
            group_subject("gp", &longest).len(),
            max_subject_len("gp", 256)
        );
        assert!(fits_control_line("gp", 256));
        let prefix = "p".repeat(64);
        let bound = max_group_id_len(&prefix);
        assert!(fits_control_line(&prefix, bound));
        assert!(!fits_control_line(&prefix, bound + 1));
        assert!(bound >= 1024, "{bound}");
    }

    #[test]
    fn history_subjects_carry_the_policy_and_one_group_token() {
        assert_eq!(history_stream("gp", 100, 600_000), "gp_history_100_600000");
        let (subjects, source, destination) = history_stream_subjects("gp", 100, 600_000);
        assert_eq!(subjects, "gp.h.100.600000.>");
        assert_eq!(source, "gp.h.100.600000.m.*");
        assert_eq!(destination, "gp.g.{{wildcard(1)}}");
        let [messages, epoch, both] = history_subjects("gp", 100, 600_000, "chat:1");
        assert_eq!(messages, "gp.h.100.600000.m.chat~3A1");
        assert_eq!(epoch, "gp.h.100.600000.e.chat~3A1");
        assert_eq!(both, "gp.h.100.600000.*.chat~3A1");
        let longest = history_subjects("gp", 1_000_000, 2_592_000_000, "g")[0].len();
        assert_eq!(
            longest,
            "gp".len() + HISTORY_INFIX.len() + HISTORY_POLICY_MAX_LEN + 1
        );
        assert!(history_fits_control_line("gp", 1000));
        assert!(!history_fits_control_line("gp", 1339));
    }

    proptest! {
        #[test]
        fn tokens_are_safe_and_decode_back(group in "\\PC{1,64}|[ -~]{1,64}|.{1,16}") {
            let token = token(&group);
            prop_assert!(is_safe_token(&token), "{:?} -> {:?}", group, token);
            prop_assert!(token.len() <= 3 * group.len());
            prop_assert_eq!(decode_token(&token), Some(group.as_bytes().to_vec()));
        }

        #[test]
        fn distinct_groups_get_distinct_subjects(a in ".{1,8}", b in ".{1,8}") {
            prop_assume!(a != b);
            prop_assert_ne!(group_subject("gp", &a), group_subject("gp", &b));
        }

        #[test]
        fn a_subject_is_always_prefix_g_and_one_token(group in "[a-z.*> ]{1,12}") {
            let subject = group_subject("gp", &group);
            let tokens: Vec<&str> = subject.split('.').collect();
            prop_assert_eq!(tokens.len(), 3);
            prop_assert_eq!(&tokens[..2], &["gp", "g"]);
        }
    }
}
