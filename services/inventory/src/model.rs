//! Devices as shown through the API and as accepted on input (with validation that names every
//! bad field). The rows as stored are in `store::devices`.

use crate::store::DeviceRow;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tally_domain::{DnaTier, NetworkLicense, Udi};
use tally_platform::FieldError;
use uuid::Uuid;

/// A device as the API shows it. The southbound password is never returned.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Device {
    pub id: Uuid,
    pub udi_pid: String,
    pub serial: String,
    pub hostname: String,
    pub model: String,
    pub software_version: String,
    pub base_url: String,
    pub site: String,
    pub smart_account: String,
    pub virtual_account: String,
    pub username: String,
    pub is_cube: bool,
    /// cube, srst, cme, or empty: voice gateways stop working when their ACK deadline passes.
    pub voice_role: String,
    pub network_license: String,
    pub dna_tier: Option<String>,
    /// Operator-defined group names, in the order given.
    pub groups: Vec<String>,
    pub revision: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<DeviceRow> for Device {
    fn from(r: DeviceRow) -> Self {
        Self {
            id: r.id,
            udi_pid: r.udi_pid,
            serial: r.udi_serial,
            hostname: r.hostname,
            model: r.model,
            software_version: r.software_version,
            base_url: r.base_url,
            site: r.site,
            smart_account: r.smart_account,
            virtual_account: r.virtual_account,
            username: r.username,
            is_cube: r.is_cube,
            voice_role: r.voice_role,
            network_license: r.network_license,
            dna_tier: r.dna_tier,
            groups: r.groups,
            revision: r.revision,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

/// A device to create or replace. CSV imports use the same column names.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct DeviceInput {
    /// Product id, e.g. `C9300-48P`.
    pub udi_pid: String,
    pub serial: String,
    pub hostname: String,
    /// Defaults to `udi_pid`.
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub software_version: Option<String>,
    /// Management base URL, e.g. `https://10.1.2.3`; the licensing API is under `/smartlic-service`.
    pub base_url: String,
    #[serde(default)]
    pub site: Option<String>,
    pub smart_account: String,
    pub virtual_account: String,
    pub username: String,
    /// Stored sealed; never returned. May be omitted when replacing a device to keep the old one.
    #[serde(default)]
    pub password: Option<String>,
    /// Same as `voice_role: cube` (kept for existing imports).
    #[serde(default)]
    pub is_cube: Option<bool>,
    /// Voice service the router runs: `cube`, `srst`, `cme`, or empty for none. These stop
    /// working when their ACK deadline passes, so they rank first among devices at risk.
    #[serde(default)]
    pub voice_role: Option<String>,
    /// `network-essentials` (default) or `network-advantage`.
    #[serde(default)]
    pub network_license: Option<String>,
    /// `dna-essentials`, `dna-advantage`, `dna-premier`, or empty for none.
    #[serde(default)]
    pub dna_tier: Option<String>,
    /// Group names for selecting devices in bulk (e.g. `access`, `wan`): at most 32, each 1 to 64
    /// of `A-Z a-z 0-9 . _ -`, no duplicates. Omitted means none. In CSV: one `groups` column,
    /// names separated by `;`.
    #[serde(default)]
    pub groups: Vec<String>,
}

/// Validated input: every field checked, password still in clear (sealed by the caller).
#[derive(Debug, Clone)]
pub struct ValidDevice {
    pub udi: Udi,
    pub hostname: String,
    pub model: String,
    pub software_version: String,
    pub base_url: String,
    pub site: String,
    pub smart_account: String,
    pub virtual_account: String,
    pub username: String,
    pub password: Option<String>,
    pub is_cube: bool,
    pub voice_role: String,
    pub network_license: NetworkLicense,
    pub dna_tier: Option<DnaTier>,
    pub groups: Vec<String>,
}

/// Most groups one device may be in.
pub const MAX_GROUPS: usize = 32;
/// Longest group name.
pub const MAX_GROUP_LEN: usize = 64;

/// Checks group names, naming each bad one as `groups[i]`.
fn groups(errors: &mut Vec<FieldError>, input: &[String]) -> Vec<String> {
    if input.len() > MAX_GROUPS {
        errors.push(FieldError {
            field: "groups".into(),
            message: format!(
                "holds {} names, at most {MAX_GROUPS} are allowed",
                input.len()
            ),
        });
        return Vec::new();
    }
    let mut out: Vec<String> = Vec::with_capacity(input.len());
    for (i, g) in input.iter().enumerate() {
        let g = g.trim();
        let problem = if g.is_empty() || g.chars().count() > MAX_GROUP_LEN {
            Some(format!("must be 1 to {MAX_GROUP_LEN} characters"))
        } else if let Some(c) = g
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            Some(format!(
                "{c:?} is not allowed: use A-Z, a-z, 0-9, '.', '_' or '-'"
            ))
        } else {
            input[..i]
                .iter()
                .position(|o| o.trim() == g)
                .map(|j| format!("{g:?} is already groups[{j}]"))
        };
        match problem {
            Some(message) => errors.push(FieldError {
                field: format!("groups[{i}]"),
                message,
            }),
            None => out.push(g.to_owned()),
        }
    }
    out
}

fn text(errors: &mut Vec<FieldError>, field: &str, v: &str, max: usize) -> String {
    let v = v.trim();
    if v.is_empty() {
        errors.push(FieldError {
            field: field.into(),
            message: "is required".into(),
        });
    } else if v.chars().count() > max {
        errors.push(FieldError {
            field: field.into(),
            message: format!("is longer than {max} characters"),
        });
    }
    v.to_owned()
}

impl DeviceInput {
    /// Checks every field; `password_required` is false when replacing a device.
    pub fn validate(&self, password_required: bool) -> Result<ValidDevice, Vec<FieldError>> {
        let mut errors = Vec::new();
        let udi = Udi::new(self.udi_pid.trim(), self.serial.trim()).map_err(|e| {
            let field = match &e {
                tally_domain::UdiError::Empty { field }
                | tally_domain::UdiError::TooLong { field, .. }
                | tally_domain::UdiError::BadChar { field, .. } => *field,
            };
            FieldError {
                field: if field == "udi_pid" {
                    "udi_pid"
                } else {
                    "serial"
                }
                .into(),
                message: e
                    .to_string()
                    .replace("udi_serial_number ", "")
                    .replace("udi_pid ", ""),
            }
        });
        let hostname = text(&mut errors, "hostname", &self.hostname, 255);
        let base_url = text(&mut errors, "base_url", &self.base_url, 2048);
        if !base_url.is_empty() {
            match reqwest::Url::parse(&base_url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
                Ok(_) => errors.push(FieldError {
                    field: "base_url".into(),
                    message: "must be an http:// or https:// URL with a host".into(),
                }),
                Err(e) => errors.push(FieldError {
                    field: "base_url".into(),
                    message: format!("is not a URL: {e}"),
                }),
            }
        }
        let smart_account = text(&mut errors, "smart_account", &self.smart_account, 255);
        let virtual_account = text(&mut errors, "virtual_account", &self.virtual_account, 255);
        let username = text(&mut errors, "username", &self.username, 255);
        let password = match self.password.as_deref().map(str::trim) {
            Some(p) if !p.is_empty() => Some(p.to_owned()),
            _ if password_required => {
                errors.push(FieldError {
                    field: "password".into(),
                    message: "is required".into(),
                });
                None
            }
            _ => None,
        };
        let network_license = match self.network_license.as_deref().map(str::trim) {
            None | Some("") => NetworkLicense::NetworkEssentials,
            Some(s) => s
                .parse()
                .unwrap_or_else(|e: tally_domain::tier::TierParseError| {
                    errors.push(FieldError {
                        field: "network_license".into(),
                        message: e.to_string(),
                    });
                    NetworkLicense::NetworkEssentials
                }),
        };
        let dna_tier = match self.dna_tier.as_deref().map(str::trim) {
            None | Some("") | Some("none") => None,
            Some(s) => match s.parse::<DnaTier>() {
                Ok(t) => Some(t),
                Err(e) => {
                    errors.push(FieldError {
                        field: "dna_tier".into(),
                        message: e.to_string(),
                    });
                    None
                }
            },
        };
        let groups = groups(&mut errors, &self.groups);
        let given = self
            .voice_role
            .as_deref()
            .map(|r| r.trim().to_ascii_lowercase());
        let voice_role = match given.as_deref() {
            None | Some("") | Some("none") if self.is_cube == Some(true) => "cube".to_owned(),
            None | Some("") | Some("none") => String::new(),
            Some(r @ ("cube" | "srst" | "cme")) => {
                if let Some(cube) = self.is_cube
                    && cube != (r == "cube")
                {
                    errors.push(FieldError {
                        field: "voice_role".into(),
                        message: format!("{r:?} contradicts is_cube = {cube}"),
                    });
                }
                r.to_owned()
            }
            Some(other) => {
                errors.push(FieldError {
                    field: "voice_role".into(),
                    message: format!("{other:?} is not one of cube, srst, cme, none"),
                });
                String::new()
            }
        };
        let udi = match udi {
            Ok(u) => Some(u),
            Err(e) => {
                errors.insert(0, e);
                None
            }
        };
        match udi {
            Some(udi) if errors.is_empty() => Ok(ValidDevice {
                model: self
                    .model
                    .as_deref()
                    .map(str::trim)
                    .filter(|m| !m.is_empty())
                    .unwrap_or(&udi.udi_pid)
                    .to_owned(),
                udi,
                hostname,
                software_version: self
                    .software_version
                    .clone()
                    .unwrap_or_default()
                    .trim()
                    .to_owned(),
                base_url: base_url.trim_end_matches('/').to_owned(),
                site: self.site.clone().unwrap_or_default().trim().to_owned(),
                smart_account,
                virtual_account,
                username,
                password,
                is_cube: voice_role == "cube",
                voice_role,
                network_license,
                dna_tier,
                groups,
            }),
            _ => Err(errors),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> DeviceInput {
        DeviceInput {
            udi_pid: "C9300-48P".into(),
            serial: "FCW1".into(),
            hostname: "sw1".into(),
            base_url: "https://10.0.0.1".into(),
            smart_account: "acme".into(),
            virtual_account: "Campus".into(),
            username: "admin".into(),
            password: Some("pw".into()),
            dna_tier: Some("dna-advantage".into()),
            ..Default::default()
        }
    }

    #[test]
    fn accepts_a_good_device() {
        let v = good().validate(true).unwrap();
        assert_eq!(v.model, "C9300-48P");
        assert_eq!(v.dna_tier, Some(DnaTier::DnaAdvantage));
    }

    #[test]
    fn names_every_bad_field() {
        let mut d = good();
        d.serial = "".into();
        d.base_url = "ftp://x".into();
        d.dna_tier = Some("gold".into());
        d.password = None;
        let errs = d.validate(true).unwrap_err();
        let fields: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["serial", "base_url", "password", "dna_tier"]);
        assert!(good().validate(false).is_ok());
    }

    #[test]
    fn checks_group_names() {
        let mut d = good();
        d.groups = vec![" access".into(), "wan-1.b_c".into()];
        assert_eq!(d.validate(true).unwrap().groups, ["access", "wan-1.b_c"]);

        d.groups = vec![
            "access".into(),
            "".into(),
            "voice lan".into(),
            "x".repeat(65),
            "access".into(),
        ];
        let errs = d.validate(true).unwrap_err();
        let got: Vec<_> = errs
            .iter()
            .map(|e| (e.field.as_str(), e.message.as_str()))
            .collect();
        assert_eq!(got.len(), 4, "{got:?}");
        assert_eq!(got[0].0, "groups[1]");
        assert_eq!(got[1].0, "groups[2]");
        assert!(got[1].1.contains("' '"), "{got:?}");
        assert_eq!(got[2].0, "groups[3]");
        assert_eq!(got[3], ("groups[4]", "\"access\" is already groups[0]"));

        d.groups = (0..33).map(|i| format!("g{i}")).collect();
        assert_eq!(d.validate(true).unwrap_err()[0].field, "groups");
        d.groups.pop();
        assert_eq!(d.validate(true).unwrap().groups.len(), 32);
    }

    #[test]
    fn voice_roles_are_named_and_checked() {
        let v = |role: Option<&str>, cube: Option<bool>| {
            DeviceInput {
                voice_role: role.map(str::to_owned),
                is_cube: cube,
                ..good()
            }
            .validate(true)
        };
        let ok = v(Some("srst"), None).unwrap();
        assert_eq!((ok.voice_role.as_str(), ok.is_cube), ("srst", false));
        let ok = v(None, Some(true)).unwrap();
        assert_eq!((ok.voice_role.as_str(), ok.is_cube), ("cube", true));
        let ok = v(Some("cube"), None).unwrap();
        assert!(ok.is_cube, "is_cube follows voice_role");
        assert_eq!(v(Some("none"), None).unwrap().voice_role, "");
        let e = v(Some("cme"), Some(true)).unwrap_err();
        assert_eq!(e[0].field, "voice_role");
        assert!(e[0].message.contains("is_cube"), "{e:?}");
        assert_eq!(v(Some(" SRST "), None).unwrap().voice_role, "srst");
        let e = v(Some("cube"), Some(false)).unwrap_err();
        assert!(e[0].message.contains("is_cube = false"), "{e:?}");
        let e = v(Some("pbx"), None).unwrap_err();
        assert_eq!(e[0].field, "voice_role");
        assert!(e[0].message.contains("\"pbx\""), "{e:?}");
    }
}
