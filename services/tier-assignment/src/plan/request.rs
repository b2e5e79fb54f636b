//! What a tier request asks for: which devices, what they should end up with, and how a job
//! takes the devices that do not pass; checked field by field before anything is planned.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tally_domain::{DnaTier, NetworkLicense};
use tally_platform::FieldError;
use utoipa::ToSchema;
use uuid::Uuid;

/// Which devices a request applies to. Criteria combine with AND; at least one is required
/// (`"model": "*"` selects every device).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Selector {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub device_ids: Vec<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// An exact model or a prefix ending in `*`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// An exact hostname or a prefix ending in `*`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// The device's current DNA tier, or `none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dna_tier: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_license: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtual_account: Option<String>,
}

/// What the selected devices should end up with; omitted fields stay as they are.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Target {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_license: Option<String>,
    /// A DNA tier, or `none` to remove the add-on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dna_tier: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtual_account: Option<String>,
    /// Draw this DNA license (as CSSM names it) instead of the first one that fits the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dna_license: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = TierJobMode)]
pub enum Mode {
    /// Refused unless every selected device passes the rules and fits the pools.
    #[default]
    AllOrNothing,
    /// Devices that pass go ahead; the others are reported with their violations.
    BestEffort,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AllOrNothing => "all_or_nothing",
            Self::BestEffort => "best_effort",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanRequest {
    pub select: Selector,
    pub target: Target,
    #[serde(default)]
    pub mode: Mode,
    /// Jobs only: refuse the job if the plan's fingerprint differs from this dry-run's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_fingerprint: Option<String>,
}

/// A target with its levels parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedTarget {
    pub network: Option<NetworkLicense>,
    /// `Some(None)`: remove the DNA add-on.
    pub dna: Option<Option<DnaTier>>,
    pub virtual_account: Option<String>,
    pub dna_license: Option<String>,
}

fn pattern_ok(p: &str) -> bool {
    let core = p.strip_suffix('*').unwrap_or(p);
    !core.contains('*')
}

impl PlanRequest {
    /// Every problem with the request, each naming its field.
    pub fn validate(&self) -> Result<ParsedTarget, Vec<FieldError>> {
        let mut errs = Vec::new();
        let mut err = |field: &str, message: String| {
            errs.push(FieldError {
                field: field.into(),
                message,
            })
        };
        let s = &self.select;
        if s == &Selector::default() {
            err(
                "select",
                "name at least one criterion (device_ids, site, group, model, hostname, dna_tier, network_license, virtual_account); \"model\": \"*\" selects every device".into(),
            );
        }
        for (field, v) in [("select.model", &s.model), ("select.hostname", &s.hostname)] {
            if let Some(p) = v
                && (p.is_empty() || !pattern_ok(p))
            {
                err(
                    field,
                    format!("{p:?} is not a name or a prefix ending in *"),
                );
            }
        }
        if let Some(t) = &s.dna_tier
            && t != "none"
            && let Err(e) = t.parse::<DnaTier>()
        {
            err("select.dna_tier", format!("{e}, or none"));
        }
        if let Some(t) = &s.network_license
            && let Err(e) = t.parse::<NetworkLicense>()
        {
            err("select.network_license", e.to_string());
        }
        let t = &self.target;
        let network = match t
            .network_license
            .as_deref()
            .map(str::parse::<NetworkLicense>)
        {
            Some(Err(e)) => {
                err("target.network_license", e.to_string());
                None
            }
            Some(Ok(n)) => Some(n),
            None => None,
        };
        let dna = match t.dna_tier.as_deref() {
            Some("none") => Some(None),
            Some(d) => match d.parse::<DnaTier>() {
                Ok(d) => Some(Some(d)),
                Err(e) => {
                    err("target.dna_tier", format!("{e}, or none"));
                    None
                }
            },
            None => None,
        };
        if let Some(va) = &t.virtual_account
            && va.trim().is_empty()
        {
            err("target.virtual_account", "empty".into());
        }
        if t.dna_license.is_some() && !matches!(dna, Some(Some(_))) {
            err(
                "target.dna_license",
                "a DNA license can only be named together with a target dna_tier".into(),
            );
        }
        if t == &Target::default() {
            err(
                "target",
                "name what to change: network_license, dna_tier or virtual_account".into(),
            );
        }
        if errs.is_empty() {
            Ok(ParsedTarget {
                network,
                dna,
                virtual_account: t.virtual_account.clone(),
                dna_license: t.dna_license.clone(),
            })
        } else {
            Err(errs)
        }
    }

    /// Identifies the request for idempotency: the same key with another body is refused.
    pub fn hash(&self) -> String {
        let text = serde_json::to_string(self).unwrap_or_default();
        hex::encode(Sha256::digest(text.as_bytes()))
    }
}
