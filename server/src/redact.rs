//! Card numbers are secrets: messages that may quote data values (errors from the
//! query engine, Arrow casts, panics) pass through [`redact`] before they reach a
//! log line, a client or a metric.
//!
//! Quiver's own messages name things with double quotes (`view "card_stats"`) and
//! never print key values; the engines below it quote values with single quotes
//! (`Cannot cast string '4000000000000202x'`) or print them bare in lists. So the
//! rule is: everything between single quotes, and every run of 9 or more digits
//! (card numbers have 13 to 19), is masked.

/// What masked text is replaced with.
pub(crate) const MASK: &str = "<redacted>";

/// Shortest run of digits that is masked.
const MIN_DIGITS: usize = 9;

/// `message` with single-quoted text and long digit runs masked.
///
/// ```text
/// Cannot cast string '4000000000000202x' to Int64   ->  Cannot cast string '<redacted>' to Int64
/// cc_num IN (4000000000000202, 4000000000000210)    ->  cc_num IN (<redacted>, <redacted>)
/// ```
pub(crate) fn redact(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut chars = message.char_indices().peekable();
    let mut previous: Option<char> = None;
    while let Some((i, c)) = chars.next() {
        // An apostrophe inside a word ("server's") opens no quote.
        let opens_quote = c == '\'' && !previous.is_some_and(|p| p.is_alphanumeric());
        previous = Some(c);
        if opens_quote {
            match message[i + 1..].find('\'') {
                Some(len) => {
                    out.push('\'');
                    out.push_str(MASK);
                    out.push('\'');
                    let end = i + 1 + len;
                    while chars.peek().is_some_and(|&(j, _)| j <= end) {
                        chars.next();
                    }
                }
                None => {
                    out.push('\'');
                    out.push_str(MASK);
                    break;
                }
            }
        } else if c.is_ascii_digit() {
            let run = message[i..]
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(message.len() - i);
            if run >= MIN_DIGITS {
                out.push_str(MASK);
            } else {
                out.push_str(&message[i..i + run]);
            }
            while chars.peek().is_some_and(|&(j, _)| j < i + run) {
                chars.next();
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn masks_values_and_keeps_names() {
        assert_eq!(
            redact("Cannot cast string '4000000000000202x' to value of Int64 type"),
            "Cannot cast string '<redacted>' to value of Int64 type"
        );
        assert_eq!(
            redact(
                "cc_num IN ([4000000000000202, 4000000000000210]) in view \"card_stats\", 12 rows"
            ),
            "cc_num IN ([<redacted>, <redacted>]) in view \"card_stats\", 12 rows"
        );
        assert_eq!(redact("unterminated 'secret"), "unterminated '<redacted>");
        assert_eq!(redact("2026-01-31T00:00:00Z"), "2026-01-31T00:00:00Z");
        assert_eq!(redact("é 'ü'é"), "é '<redacted>'é");
        assert_eq!(
            redact("the server's clock says 2026-01-01T00:00:00Z"),
            "the server's clock says 2026-01-01T00:00:00Z"
        );
    }

    proptest! {
        #[test]
        fn no_card_number_survives(prefix in "\\PC{0,20}", card in 1_000_000_000_000u64..u64::MAX, suffix in "\\PC{0,20}") {
            let message = format!("{prefix}{card}{suffix}");
            let out = redact(&message);
            prop_assert!(!out.contains(&card.to_string()), "{out}");
        }
    }
}
