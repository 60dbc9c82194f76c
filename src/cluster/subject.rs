//! Topic → NATS subject. A topic may hold `.`, `/`, `:`, `@` and runs of dots; NATS splits
//! subjects on `.`, refuses empty tokens and whitespace, and reads `*` and `>` tokens as
//! wildcards. So a topic's dot-separated parts become the subject's tokens (other NATS
//! clients can still use wildcards over them), an empty part becomes the token `~`, and any
//! byte outside `A-Z a-z 0-9 - _ : / @` becomes `~` and two hex digits. `~` never passes
//! through unescaped, so the mapping is injective, and every result is a valid literal
//! subject (no wildcard, no empty token), whatever the topic rules allow.

use std::fmt::Write;

/// The subject that carries `topic` under `prefix`: `<prefix>.<escaped topic>`.
pub fn of(prefix: &str, topic: &str) -> String {
    let mut subject = String::with_capacity(prefix.len() + 1 + topic.len());
    subject.push_str(prefix);
    for part in topic.split('.') {
        subject.push('.');
        if part.is_empty() {
            subject.push('~');
            continue;
        }
        for &b in part.as_bytes() {
            if passes(b) {
                subject.push(b as char);
            } else {
                let _ = write!(subject, "~{b:02X}");
            }
        }
    }
    subject
}

/// Bytes a subject token may carry as they are.
fn passes(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-_:/@".contains(&b)
}

/// Checks a configured prefix: one or more non-empty tokens of passing bytes.
pub fn check_prefix(prefix: &String) -> Result<(), String> {
    if prefix
        .split('.')
        .all(|t| !t.is_empty() && t.bytes().all(passes))
    {
        Ok(())
    } else {
        Err(format!(
            "`{prefix}`: tokens separated by dots, each of letters, digits and - _ : / @"
        ))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The inverse of `of` for the part after the prefix: the proof of injectivity.
    fn topic_of(escaped: &str) -> Option<String> {
        let mut bytes = Vec::new();
        for (i, token) in escaped.split('.').enumerate() {
            if i > 0 {
                bytes.push(b'.');
            }
            if token == "~" {
                continue;
            }
            let mut rest = token.as_bytes();
            while let Some((&b, tail)) = rest.split_first() {
                if b == b'~' {
                    let hex = std::str::from_utf8(tail.get(..2)?).ok()?;
                    bytes.push(u8::from_str_radix(hex, 16).ok()?);
                    rest = &tail[2..];
                } else {
                    bytes.push(b);
                    rest = tail;
                }
            }
        }
        String::from_utf8(bytes).ok()
    }

    /// What nats-server accepts as a literal subject to publish and subscribe to.
    fn valid_literal(subject: &str) -> bool {
        subject
            .split('.')
            .all(|t| !t.is_empty() && t != "*" && t != ">" && !t.contains(char::is_whitespace))
            && subject.is_ascii()
    }

    #[test]
    fn examples() {
        assert_eq!(of("wsgate", "prices"), "wsgate.prices");
        assert_eq!(of("a.b", "eu.btc/usd:1@x"), "a.b.eu.btc/usd:1@x");
        assert_eq!(of("p", "a..b."), "p.a.~.b.~");
        assert_eq!(of("p", "."), "p.~.~");
        assert_eq!(of("p", "*"), "p.~2A");
        assert_eq!(of("p", "a >"), "p.a~20~3E");
        assert_eq!(of("p", "~"), "p.~7E");
        assert_eq!(of("p", "é"), "p.~C3~A9");
    }

    #[test]
    fn prefixes() {
        assert!(check_prefix(&"wsgate".into()).is_ok());
        assert!(check_prefix(&"org.wsgate-1".into()).is_ok());
        for bad in ["", ".", "a.", ".a", "a..b", "a.*", "a.>", "a b", "~", "é"] {
            assert!(check_prefix(&bad.into()).is_err(), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn any_string_maps_to_a_valid_subject_and_back(topic in ".{0,40}") {
            let subject = of("wsgate", &topic);
            prop_assert!(valid_literal(&subject), "{subject}");
            let escaped = subject.strip_prefix("wsgate.").unwrap();
            prop_assert_eq!(topic_of(escaped), Some(topic));
        }

        #[test]
        fn topics_from_the_allowed_alphabet(topic in "[-_.:/@a-zA-Z0-9~*> ]{1,40}") {
            let subject = of("p", &topic);
            prop_assert!(valid_literal(&subject), "{subject}");
            prop_assert_eq!(topic_of(&subject[2..]), Some(topic));
        }

        #[test]
        fn distinct_topics_get_distinct_subjects(a in "[-_.:/@a-c~]{0,8}", b in "[-_.:/@a-c~]{0,8}") {
            prop_assert_eq!(a == b, of("p", &a) == of("p", &b));
        }
    }
}
