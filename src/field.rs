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
