//! A config field's problem, as every section's `validate` reports it: the field's path
//! inside its section and what is wrong. The root ([`crate::config`]) prefixes the section's
//! name. Messages name values, never a secret's.

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub field: String,
    pub message: String,
}

impl Invalid {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The same problem, its field path under `section`.
    pub fn within(self, section: &str) -> Self {
        Self {
            field: format!("{section}.{}", self.field),
            message: self.message,
        }
    }
}

/// A duration as humans write it in the config (`1m 30s`).
pub fn human(d: std::time::Duration) -> humantime::FormattedDuration {
    humantime::format_duration(d)
}

/// Levenshtein distance, for "did you mean" hints.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// A serde "unknown field `x`, expected one of `a`, `b`" message with a hint added when one
/// of the expected names is within two edits: "(did you mean `a`?)".
pub fn with_hint(message: &str) -> String {
    // toml adds the table it was in on a line of its own: the field's path says it already.
    let message = message.split("\nin `").next().unwrap_or(message).trim_end();
    let Some(rest) = message.strip_prefix("unknown field `") else {
        return message.to_string();
    };
    let Some((unknown, expected)) = rest.split_once('`') else {
        return message.to_string();
    };
    let hint = expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(|k| (edit_distance(k, unknown), k))
        .filter(|(d, _)| *d <= 2)
        .min();
    match hint {
        Some((_, k)) => format!("unknown field `{unknown}` (did you mean `{k}`?){expected}"),
        None => message.to_string(),
    }
}

/// The line (1-based) of `text` where `key` is set (`key =`) or opens a table (`[key]`,
/// `[a.key]`), the first one outside comments.
pub fn line_of(text: &str, key: &str) -> Option<usize> {
    let sets = |l: &str| {
        let t = l.trim();
        if t.starts_with('#') {
            return false;
        }
        if t.starts_with('[') {
            return t
                .trim_matches(|c| c == '[' || c == ']')
                .split('.')
                .any(|seg| seg.trim() == key);
        }
        l.match_indices(key).any(|(i, _)| {
            let before = l[..i].chars().next_back();
            let after = l[i + key.len()..].trim_start();
            before.is_none_or(|c| !(c.is_alphanumeric() || c == '_')) && after.starts_with('=')
        })
    };
    text.lines().position(sets).map(|i| i + 1)
}
