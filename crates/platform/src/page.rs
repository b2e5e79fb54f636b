//! One way to page a list route: `limit` and `offset` from the query string, checked against the
//! route's default and maximum, with one error naming the field.

use crate::{FieldError, Problem};

/// What a list route allows: the page size when none is asked for, and the largest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRules {
    pub default: i64,
    pub max: i64,
}

impl PageRules {
    pub const fn new(default: i64, max: i64) -> Self {
        Self { default, max }
    }

    /// The page asked for, or a validation problem naming `limit` or `offset` and the bad value.
    pub fn page(self, limit: Option<i64>, offset: Option<i64>) -> Result<Page, Problem> {
        let limit = limit.unwrap_or(self.default);
        let offset = offset.unwrap_or(0);
        let mut errors = Vec::new();
        if !(1..=self.max).contains(&limit) {
            errors.push(FieldError {
                field: "limit".into(),
                message: format!("{limit} is not between 1 and {}", self.max),
            });
        }
        if offset < 0 {
            errors.push(FieldError {
                field: "offset".into(),
                message: format!("{offset} is negative"),
            });
        }
        if errors.is_empty() {
            Ok(Page { limit, offset })
        } else {
            Err(Problem::validation(errors))
        }
    }
}

/// A checked page: `1 <= limit <= max`, `offset >= 0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub limit: i64,
    pub offset: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: PageRules = PageRules::new(100, 1000);

    #[test]
    fn defaults_bounds_and_errors() {
        assert_eq!(
            RULES.page(None, None).unwrap(),
            Page {
                limit: 100,
                offset: 0
            }
        );
        assert_eq!(
            RULES.page(Some(1000), Some(5)).unwrap(),
            Page {
                limit: 1000,
                offset: 5
            }
        );
        for bad in [0, -1, 1001] {
            let p = RULES.page(Some(bad), None).unwrap_err();
            assert_eq!(p.detail, format!("limit: {bad} is not between 1 and 1000"));
        }
        let p = RULES.page(Some(1), Some(-3)).unwrap_err();
        assert_eq!(p.detail, "offset: -3 is negative");
        let p = RULES.page(Some(0), Some(-3)).unwrap_err();
        assert_eq!(p.detail, "2 fields are invalid");
    }
}
