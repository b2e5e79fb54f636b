//! License tiers: the perpetual network license and the DNA subscription add-on.

use serde::{Deserialize, Serialize};
use std::{fmt, str::FromStr};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown {kind} {value:?}; expected one of {expected}")]
pub struct TierParseError {
    pub kind: &'static str,
    pub value: String,
    pub expected: &'static str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum NetworkLicense {
    NetworkEssentials,
    NetworkAdvantage,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum DnaTier {
    DnaEssentials,
    DnaAdvantage,
    DnaPremier,
}

impl NetworkLicense {
    pub const ALL: [Self; 2] = [Self::NetworkEssentials, Self::NetworkAdvantage];
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NetworkEssentials => "network-essentials",
            Self::NetworkAdvantage => "network-advantage",
        }
    }
}

impl DnaTier {
    pub const ALL: [Self; 3] = [Self::DnaEssentials, Self::DnaAdvantage, Self::DnaPremier];
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DnaEssentials => "dna-essentials",
            Self::DnaAdvantage => "dna-advantage",
            Self::DnaPremier => "dna-premier",
        }
    }
}

impl fmt::Display for NetworkLicense {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
impl fmt::Display for DnaTier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for NetworkLicense {
    type Err = TierParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| TierParseError {
                kind: "network license",
                value: s.to_owned(),
                expected: "network-essentials, network-advantage",
            })
    }
}
impl FromStr for DnaTier {
    type Err = TierParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| TierParseError {
                kind: "DNA tier",
                value: s.to_owned(),
                expected: "dna-essentials, dna-advantage, dna-premier",
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn round_trips_and_rejects_unknown() {
        for t in DnaTier::ALL {
            assert_eq!(t.as_str().parse::<DnaTier>().unwrap(), t);
        }
        for t in NetworkLicense::ALL {
            assert_eq!(t.as_str().parse::<NetworkLicense>().unwrap(), t);
        }
        let e = "dna-gold".parse::<DnaTier>().unwrap_err();
        assert!(e.to_string().contains("dna-gold"));
    }
}
