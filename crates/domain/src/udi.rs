//! Unique Device Identifier: product id + serial number.

use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UdiError {
    #[error("{field} is empty")]
    Empty { field: &'static str },
    #[error("{field} is longer than {max} characters")]
    TooLong { field: &'static str, max: usize },
    #[error("{field} contains {ch:?}; allowed are letters, digits and - _ . / +")]
    BadChar { field: &'static str, ch: char },
}

/// The `sudi` object of Cisco's formats, field names as on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
pub struct Udi {
    pub udi_pid: String,
    pub udi_serial_number: String,
}

fn check(field: &'static str, v: &str, max: usize) -> Result<(), UdiError> {
    if v.is_empty() {
        return Err(UdiError::Empty { field });
    }
    if v.chars().count() > max {
        return Err(UdiError::TooLong { field, max });
    }
    if let Some(ch) = v
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/' | '+')))
    {
        return Err(UdiError::BadChar { field, ch });
    }
    Ok(())
}

impl Udi {
    pub fn new(pid: impl Into<String>, serial: impl Into<String>) -> Result<Self, UdiError> {
        let udi = Self {
            udi_pid: pid.into(),
            udi_serial_number: serial.into(),
        };
        udi.validate()?;
        Ok(udi)
    }

    pub fn validate(&self) -> Result<(), UdiError> {
        check("udi_pid", &self.udi_pid, 40)?;
        check("udi_serial_number", &self.udi_serial_number, 40)
    }
}

impl fmt::Display for Udi {
    /// The form `show license status` prints: `PID:C9300-48P,SN:FCW2501XXXX`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PID:{},SN:{}", self.udi_pid, self.udi_serial_number)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_real_udis_and_names_bad_fields() {
        let udi = Udi::new("C9300-48P", "FCW2501XXXX").unwrap();
        assert_eq!(udi.to_string(), "PID:C9300-48P,SN:FCW2501XXXX");
        assert_eq!(
            Udi::new("", "X").unwrap_err(),
            UdiError::Empty { field: "udi_pid" }
        );
        assert_eq!(
            Udi::new("C9300", "FC W").unwrap_err(),
            UdiError::BadChar {
                field: "udi_serial_number",
                ch: ' '
            }
        );
    }
}
