//! Tier rules as data: which licenses fit which models, which DNA tiers may ride on which network
//! license, and the minimum software for Smart Licensing Using Policy. Tally ships defaults
//! (`Rules::defaults`); operators replace them through the API, so nothing here is hard-wired into
//! the planner.

use crate::{DnaTier, NetworkLicense};
use serde::{Deserialize, Serialize};
use std::{cmp::Ordering, fmt, str::FromStr};

/// A license level: the perpetual network license or the DNA subscription add-on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Level {
    Network(NetworkLicense),
    Dna(DnaTier),
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Network(n) => n.as_str(),
            Self::Dna(d) => d.as_str(),
        }
    }
    pub fn is_dna(self) -> bool {
        matches!(self, Self::Dna(_))
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Level {
    type Err = crate::tier::TierParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(n) = s.parse::<NetworkLicense>() {
            return Ok(Self::Network(n));
        }
        s.parse::<DnaTier>()
            .map(Self::Dna)
            .map_err(|_| crate::tier::TierParseError {
                kind: "license level",
                value: s.to_owned(),
                expected: "network-essentials, network-advantage, dna-essentials, dna-advantage, dna-premier",
            })
    }
}

impl Serialize for Level {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Level {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One purchasable license as CSSM names it, the level it grants and the models it fits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LicenseRule {
    /// The license name exactly as CSSM's licenses API lists it.
    pub name: String,
    pub level: Level,
    /// Model patterns: an exact model, or a prefix ending in `*` (`C9300-24*`).
    pub models: Vec<String>,
}

impl LicenseRule {
    pub fn fits(&self, model: &str) -> bool {
        self.models.iter().any(|p| pattern_matches(p, model))
    }
}

fn pattern_matches(pattern: &str, model: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => model.starts_with(prefix),
        None => pattern == model,
    }
}

/// Which DNA tiers may be added on a network license.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pairing {
    pub network: NetworkLicense,
    pub dna: Vec<DnaTier>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rules {
    /// Devices below this IOS-XE version cannot run Smart Licensing Using Policy.
    pub min_software_version: String,
    pub pairing: Vec<Pairing>,
    /// Checked in order: the first license of the wanted level that fits the model is drawn.
    pub licenses: Vec<LicenseRule>,
}

/// A rule broken by a wanted change. `rule` names the rule so an operator can find and fix it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    /// Stable machine code: `software-too-old`, `pairing`, `license-model`, `no-license-for-model`,
    /// `unknown-license`, `license-level`, and the pool codes the planner adds.
    pub code: String,
    pub rule: String,
    pub message: String,
}

impl Violation {
    pub fn new(code: &str, rule: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: code.to_owned(),
            rule: rule.into(),
            message: message.into(),
        }
    }
}

/// What a device is: the facts the rules look at.
#[derive(Debug, Clone, Copy)]
pub struct DeviceFacts<'a> {
    pub model: &'a str,
    pub software_version: &'a str,
}

/// What a device should end up with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wanted<'a> {
    pub network: NetworkLicense,
    pub dna: Option<DnaTier>,
    /// A DNA license the operator named; otherwise the first fitting one is drawn.
    pub dna_license: Option<&'a str>,
}

/// The licenses a device holds for its levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holdings<'r> {
    pub network: &'r LicenseRule,
    pub dna: Option<&'r LicenseRule>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid rules: {}", .problems.join("; "))]
pub struct RulesError {
    pub problems: Vec<String>,
}

impl Rules {
    /// Cisco's catalogue for the models Tally knows out of the box: per model family (and port
    /// count for switches, whose DNA licenses are sold per 24 or 48 ports) one license per level.
    pub fn defaults() -> Self {
        // (license name prefix, name suffix, model patterns)
        let families: [(&str, &str, &[&str]); 8] = [
            ("C9300", ", 24-port", &["C9300-24*"]),
            ("C9300", ", 48-port", &["C9300-48*"]),
            ("C9200", ", 24-port", &["C9200-24*", "C9200L-24*"]),
            ("C9200", ", 48-port", &["C9200-48*", "C9200L-48*"]),
            ("C9800", "", &["C9800-*"]),
            ("ISR4300", "", &["ISR43*"]),
            ("ISR4400", "", &["ISR44*"]),
            ("C8200", "", &["C8200-*"]),
        ];
        let mut licenses = Vec::new();
        for (family, suffix, models) in families {
            let models: Vec<String> = models.iter().map(|m| (*m).to_owned()).collect();
            for (level, label, term) in [
                (Level::Dna(DnaTier::DnaEssentials), "DNA Essentials", ", 3Y"),
                (Level::Dna(DnaTier::DnaAdvantage), "DNA Advantage", ", 3Y"),
                (Level::Dna(DnaTier::DnaPremier), "DNA Premier", ", 3Y"),
                (
                    Level::Network(NetworkLicense::NetworkEssentials),
                    "Network Essentials",
                    "",
                ),
                (
                    Level::Network(NetworkLicense::NetworkAdvantage),
                    "Network Advantage",
                    "",
                ),
            ] {
                licenses.push(LicenseRule {
                    name: format!("{family} {label}{suffix}{term}"),
                    level,
                    models: models.clone(),
                });
            }
        }
        Self {
            min_software_version: "17.3.2".into(),
            // As the IOS-XE license YANG allows: only DNA Essentials rides on Network Essentials.
            pairing: vec![
                Pairing {
                    network: NetworkLicense::NetworkEssentials,
                    dna: vec![DnaTier::DnaEssentials],
                },
                Pairing {
                    network: NetworkLicense::NetworkAdvantage,
                    dna: DnaTier::ALL.to_vec(),
                },
            ],
            licenses,
        }
    }

    /// Every problem at once, each naming the field (`licenses[3].models[0]`).
    pub fn validate(&self) -> Result<(), RulesError> {
        let mut problems = Vec::new();
        if let Err(e) = self.min_software_version.parse::<SoftwareVersion>() {
            problems.push(format!("min_software_version: {e}"));
        }
        let mut seen_network = Vec::new();
        for (i, p) in self.pairing.iter().enumerate() {
            if seen_network.contains(&p.network) {
                problems.push(format!("pairing[{i}].network: {} listed twice", p.network));
            }
            seen_network.push(p.network);
        }
        let mut names: Vec<&str> = Vec::new();
        for (i, l) in self.licenses.iter().enumerate() {
            if l.name.trim().is_empty() {
                problems.push(format!("licenses[{i}].name: empty"));
            } else if names.contains(&l.name.as_str()) {
                problems.push(format!("licenses[{i}].name: {:?} listed twice", l.name));
            }
            names.push(&l.name);
            if l.models.is_empty() {
                problems.push(format!(
                    "licenses[{i}].models: empty; name at least one model"
                ));
            }
            for (j, m) in l.models.iter().enumerate() {
                let core = m.strip_suffix('*').unwrap_or(m);
                if core.is_empty() || core.contains('*') || core.contains(char::is_whitespace) {
                    problems.push(format!(
                        "licenses[{i}].models[{j}]: {m:?} is not a model or a prefix ending in *"
                    ));
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(RulesError { problems })
        }
    }

    /// The first license of `level` that fits `model`.
    pub fn license_for(&self, model: &str, level: Level) -> Option<&LicenseRule> {
        self.licenses
            .iter()
            .find(|l| l.level == level && l.fits(model))
    }

    pub fn license_named(&self, name: &str) -> Option<(usize, &LicenseRule)> {
        self.licenses
            .iter()
            .enumerate()
            .find(|(_, l)| l.name == name)
    }

    fn pairing_allows(&self, network: NetworkLicense, dna: DnaTier) -> Option<usize> {
        self.pairing
            .iter()
            .position(|p| p.network == network)
            .filter(|&i| self.pairing[i].dna.contains(&dna))
    }

    /// The licenses `device` would hold with `wanted`, or every rule the change breaks.
    pub fn check(
        &self,
        device: DeviceFacts<'_>,
        wanted: Wanted<'_>,
    ) -> Result<Holdings<'_>, Vec<Violation>> {
        let mut v = Vec::new();
        match (
            device.software_version.parse::<SoftwareVersion>(),
            self.min_software_version.parse::<SoftwareVersion>(),
        ) {
            (Ok(have), Ok(min)) if have < min => v.push(Violation::new(
                "software-too-old",
                format!("min_software_version = {}", self.min_software_version),
                format!(
                    "software {} is older than {}, the first release with Smart Licensing Using Policy",
                    device.software_version, self.min_software_version
                ),
            )),
            (Err(e), _) => v.push(Violation::new(
                "software-too-old",
                format!("min_software_version = {}", self.min_software_version),
                format!("cannot compare the device's software version: {e}"),
            )),
            _ => {}
        }
        if let Some(dna) = wanted.dna
            && self.pairing_allows(wanted.network, dna).is_none()
        {
            let rule = match self
                .pairing
                .iter()
                .position(|p| p.network == wanted.network)
            {
                Some(i) => format!("pairing[{i}] ({})", wanted.network),
                None => format!("pairing (no entry for {})", wanted.network),
            };
            v.push(Violation::new(
                "pairing",
                rule,
                format!("{dna} cannot be added on {}", wanted.network),
            ));
        }
        let network = self.holding(device.model, Level::Network(wanted.network), None, &mut v);
        let dna = wanted
            .dna
            .and_then(|d| self.holding(device.model, Level::Dna(d), wanted.dna_license, &mut v));
        match network {
            Some(network) if v.is_empty() => Ok(Holdings { network, dna }),
            _ => Err(v),
        }
    }

    fn holding(
        &self,
        model: &str,
        level: Level,
        named: Option<&str>,
        v: &mut Vec<Violation>,
    ) -> Option<&LicenseRule> {
        if let Some(name) = named {
            let Some((i, l)) = self.license_named(name) else {
                v.push(Violation::new(
                    "unknown-license",
                    "licenses",
                    format!("no license named {name:?} in the rules"),
                ));
                return None;
            };
            if l.level != level {
                v.push(Violation::new(
                    "license-level",
                    format!("licenses[{i}] ({name})"),
                    format!("{name} grants {}, not {level}", l.level),
                ));
                return None;
            }
            if !l.fits(model) {
                v.push(Violation::new(
                    "license-model",
                    format!("licenses[{i}] ({name}) models {:?}", l.models),
                    format!("{name} does not fit model {model}"),
                ));
                return None;
            }
            return Some(l);
        }
        let found = self.license_for(model, level);
        if found.is_none() {
            v.push(Violation::new(
                "no-license-for-model",
                "licenses",
                format!("no {level} license in the rules fits model {model}"),
            ));
        }
        found
    }
}

/// An IOS-XE version such as `17.3.2`, `17.9.4a` or `16.12.05`: numeric parts compare as numbers,
/// a trailing letter as a later rebuild of the same release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SoftwareVersion {
    parts: Vec<u32>,
    rebuild: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0:?} is not a software version like 17.3.2")]
pub struct VersionError(pub String);

impl FromStr for SoftwareVersion {
    type Err = VersionError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || VersionError(s.to_owned());
        let mut parts = Vec::new();
        let mut rebuild = String::new();
        let pieces: Vec<&str> = s.trim().split('.').collect();
        for (i, piece) in pieces.iter().enumerate() {
            let digits: String = piece.chars().take_while(char::is_ascii_digit).collect();
            let rest = &piece[digits.len()..];
            if digits.is_empty() || (!rest.is_empty() && i + 1 != pieces.len()) {
                return Err(bad());
            }
            if !rest.chars().all(|c| c.is_ascii_alphanumeric()) {
                return Err(bad());
            }
            parts.push(digits.parse().map_err(|_| bad())?);
            rebuild = rest.to_ascii_lowercase();
        }
        if parts.len() < 2 {
            return Err(bad());
        }
        Ok(Self { parts, rebuild })
    }
}

impl PartialOrd for SoftwareVersion {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for SoftwareVersion {
    fn cmp(&self, other: &Self) -> Ordering {
        let n = self.parts.len().max(other.parts.len());
        for i in 0..n {
            let a = self.parts.get(i).copied().unwrap_or(0);
            let b = other.parts.get(i).copied().unwrap_or(0);
            match a.cmp(&b) {
                Ordering::Equal => {}
                o => return o,
            }
        }
        self.rebuild.cmp(&other.rebuild)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn v(s: &str) -> SoftwareVersion {
        s.parse().unwrap()
    }

    #[test]
    fn versions_compare_numerically() {
        assert!(v("17.3.2") < v("17.3.4"));
        assert!(v("17.3.2") < v("17.12.3"));
        assert!(v("16.12.05") < v("17.3.2"));
        assert!(v("17.9.4") < v("17.9.4a"));
        assert_eq!(v("17.3.2"), v("17.03.02"));
        assert!("17".parse::<SoftwareVersion>().is_err());
        assert!("17.x".parse::<SoftwareVersion>().is_err());
        assert!("17.3a.2".parse::<SoftwareVersion>().is_err());
    }

    #[test]
    fn defaults_are_valid_and_fit_every_known_model() {
        let r = Rules::defaults();
        r.validate().unwrap();
        for model in [
            "C9300-24P",
            "C9300-48P",
            "C9300-48U",
            "C9200-24P",
            "C9200-48P",
            "C9800-40",
            "C9800-L-C",
            "ISR4331",
            "ISR4451",
            "C8200-1N-4T",
        ] {
            for level in [
                Level::Network(NetworkLicense::NetworkAdvantage),
                Level::Dna(DnaTier::DnaAdvantage),
            ] {
                assert!(r.license_for(model, level).is_some(), "{model} {level}");
            }
        }
        assert_eq!(
            r.license_for("C9300-48P", Level::Dna(DnaTier::DnaAdvantage))
                .unwrap()
                .name,
            "C9300 DNA Advantage, 48-port, 3Y"
        );
    }

    #[test]
    fn a_24_port_license_does_not_fit_a_48_port_switch() {
        let r = Rules::defaults();
        let err = r
            .check(
                DeviceFacts {
                    model: "C9300-48P",
                    software_version: "17.9.4a",
                },
                Wanted {
                    network: NetworkLicense::NetworkAdvantage,
                    dna: Some(DnaTier::DnaAdvantage),
                    dna_license: Some("C9300 DNA Advantage, 24-port, 3Y"),
                },
            )
            .unwrap_err();
        assert_eq!(err.len(), 1);
        assert_eq!(err[0].code, "license-model");
        assert!(err[0].rule.contains("C9300-24*"), "{:?}", err[0]);
        assert!(err[0].message.contains("C9300-48P"));
    }

    #[test]
    fn pairing_and_software_are_checked_together() {
        let r = Rules::defaults();
        let err = r
            .check(
                DeviceFacts {
                    model: "C9300-24P",
                    software_version: "16.12.5",
                },
                Wanted {
                    network: NetworkLicense::NetworkEssentials,
                    dna: Some(DnaTier::DnaAdvantage),
                    dna_license: None,
                },
            )
            .unwrap_err();
        let codes: Vec<&str> = err.iter().map(|v| v.code.as_str()).collect();
        assert_eq!(codes, ["software-too-old", "pairing"]);
        assert!(err[1].rule.starts_with("pairing[0]"));
    }

    #[test]
    fn unknown_model_has_no_license() {
        let err = Rules::defaults()
            .check(
                DeviceFacts {
                    model: "N9K-C93180",
                    software_version: "17.9.1",
                },
                Wanted {
                    network: NetworkLicense::NetworkAdvantage,
                    dna: None,
                    dna_license: None,
                },
            )
            .unwrap_err();
        assert_eq!(err[0].code, "no-license-for-model");
    }

    #[test]
    fn validation_names_every_bad_field() {
        let mut r = Rules::defaults();
        r.min_software_version = "latest".into();
        r.licenses[1].models = vec![];
        r.licenses[2].models = vec!["C9*00*".into()];
        r.licenses[3].name = r.licenses[0].name.clone();
        let e = r.validate().unwrap_err();
        assert_eq!(e.problems.len(), 4, "{e}");
        assert!(e.problems[0].starts_with("min_software_version"));
        assert!(e.to_string().contains("licenses[2].models[0]"));
        assert!(e.to_string().contains("licenses[3].name"));
    }

    #[test]
    fn rules_round_trip_as_json_and_refuse_unknown_fields() {
        let r = Rules::defaults();
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<Rules>(&text).unwrap(), r);
        let bad = text.replacen("\"pairing\"", "\"pairings\"", 1);
        assert!(serde_json::from_str::<Rules>(&bad).is_err());
        let bad_level = text.replacen("dna-essentials", "dna-gold", 1);
        assert!(
            serde_json::from_str::<Rules>(&bad_level)
                .unwrap_err()
                .to_string()
                .contains("dna-gold")
        );
    }

    proptest! {
        #[test]
        fn version_order_matches_tuple_order(a in proptest::collection::vec(0u32..40, 2..4),
                                             b in proptest::collection::vec(0u32..40, 2..4)) {
            let sa = a.iter().map(u32::to_string).collect::<Vec<_>>().join(".");
            let sb = b.iter().map(u32::to_string).collect::<Vec<_>>().join(".");
            let pad = |x: &Vec<u32>| { let mut x = x.clone(); x.resize(4, 0); x };
            prop_assert_eq!(v(&sa).cmp(&v(&sb)), pad(&a).cmp(&pad(&b)));
        }

        #[test]
        fn a_holding_always_fits_the_model(model in "(C9300|C9200|C9800|ISR43|ISR44|C8200)-[0-9]{2}[A-Z]?",
                                           dna in 0usize..3, net in 0usize..2) {
            let r = Rules::defaults();
            let wanted = Wanted { network: NetworkLicense::ALL[net], dna: Some(DnaTier::ALL[dna]), dna_license: None };
            if let Ok(h) = r.check(DeviceFacts { model: &model, software_version: "17.9.4" }, wanted) {
                prop_assert!(h.network.fits(&model));
                prop_assert!(h.dna.unwrap().fits(&model));
                prop_assert_eq!(h.dna.unwrap().level, Level::Dna(DnaTier::ALL[dna]));
            }
        }
    }
}
