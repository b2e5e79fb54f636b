//! Offline exchange with CSSM (slp-reference section 3): the usage bundle `UD_SA_<ts>.tar.gz`
//! (manifest.mf + one `UD_VA_<ts>.tar.gz` per virtual account, holding one `dev_<id>_<ts>.txt` per
//! device) and CSSM's answer, a tar.gz of `ACK_UD_VA_*.tar.gz`, each holding `ACK_dev_<id>_*.txt`.
//! Everything happens in memory, with size limits against archive bombs.

use flate2::{Compression, read::GzDecoder, write::GzEncoder};
use std::io::Read;

/// Largest total size of the files inside a bundle after decompression.
pub const MAX_UNPACKED_BYTES: u64 = 2 * 1024 * 1024 * 1024;
/// Most files one archive may hold.
pub const MAX_ENTRIES: usize = 500_000;

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("archive could not be read: {0}")]
    Archive(String),
    #[error("bundle has no {0}")]
    Missing(String),
    #[error("manifest.mf: {0}")]
    Manifest(String),
    #[error("file name {0:?} is not of the form {1}")]
    BadName(String, &'static str),
    #[error("bundle unpacks to more than {MAX_UNPACKED_BYTES} bytes or {MAX_ENTRIES} files")]
    TooLarge,
    #[error("{0} is not UTF-8 text")]
    NotText(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceFile {
    /// The collector's own id for the device; CSSM echoes it back in the ACK file name.
    pub device_id: String,
    pub content: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaUsage {
    pub va_name: String,
    pub va_id: String,
    pub devices: Vec<DeviceFile>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageBundle {
    pub created_by: String,
    pub sa_name: String,
    pub sa_id: String,
    pub timestamp: i64,
    pub vas: Vec<VaUsage>,
}

fn tar_gz(entries: &[(String, Vec<u8>)]) -> Result<Vec<u8>, BundleError> {
    let enc = GzEncoder::new(Vec::new(), Compression::fast());
    let mut builder = tar::Builder::new(enc);
    for (name, data) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        builder
            .append_data(&mut header, name, data.as_slice())
            .map_err(|e| BundleError::Archive(e.to_string()))?;
    }
    let enc = builder
        .into_inner()
        .map_err(|e| BundleError::Archive(e.to_string()))?;
    enc.finish()
        .map_err(|e| BundleError::Archive(e.to_string()))
}

fn untar_gz(bytes: &[u8], budget: &mut u64) -> Result<Vec<(String, Vec<u8>)>, BundleError> {
    let mut archive = tar::Archive::new(GzDecoder::new(bytes));
    let mut out = Vec::new();
    for entry in archive
        .entries()
        .map_err(|e| BundleError::Archive(e.to_string()))?
    {
        let mut entry = entry.map_err(|e| BundleError::Archive(e.to_string()))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = entry
            .path()
            .map_err(|e| BundleError::Archive(e.to_string()))?
            .to_string_lossy()
            .trim_start_matches("./")
            .trim_start_matches('/')
            .to_owned();
        let size = entry.header().size().unwrap_or(u64::MAX);
        if size > *budget || out.len() >= MAX_ENTRIES {
            return Err(BundleError::TooLarge);
        }
        let mut data = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        (&mut entry)
            .take(*budget + 1)
            .read_to_end(&mut data)
            .map_err(|e| BundleError::Archive(e.to_string()))?;
        *budget = budget
            .checked_sub(data.len() as u64)
            .ok_or(BundleError::TooLarge)?;
        out.push((name, data));
    }
    Ok(out)
}

fn text(name: &str, data: Vec<u8>) -> Result<String, BundleError> {
    String::from_utf8(data).map_err(|_| BundleError::NotText(name.to_owned()))
}

impl UsageBundle {
    pub fn file_name(&self) -> String {
        format!("UD_SA_{}.tar.gz", self.timestamp)
    }

    fn va_file(&self, i: usize) -> String {
        // One timestamp per bundle; a suffix keeps several VAs apart.
        if i == 0 {
            format!("UD_VA_{}.tar.gz", self.timestamp)
        } else {
            format!("UD_VA_{}_{}.tar.gz", self.timestamp, i)
        }
    }

    pub fn to_tar_gz(&self) -> Result<Vec<u8>, BundleError> {
        let mut manifest = format!(
            "Manifest-Version: 1.0\nCreated-By: {}\nSmart-Account: {}\nSmart-Account-ID: {}\n",
            self.created_by, self.sa_name, self.sa_id
        );
        let mut entries = Vec::new();
        for (i, va) in self.vas.iter().enumerate() {
            let name = self.va_file(i);
            manifest.push_str(&format!(
                "\nName: /{name}\nSpecification-VA: {}\nSpecification-VA-ID: {}\n",
                va.va_name, va.va_id
            ));
            let files: Vec<(String, Vec<u8>)> = va
                .devices
                .iter()
                .map(|d| {
                    (
                        format!("dev_{}_{}.txt", d.device_id, self.timestamp),
                        d.content.clone().into_bytes(),
                    )
                })
                .collect();
            entries.push((name, tar_gz(&files)?));
        }
        entries.insert(0, ("manifest.mf".to_owned(), manifest.into_bytes()));
        tar_gz(&entries)
    }

    pub fn from_tar_gz(bytes: &[u8]) -> Result<Self, BundleError> {
        let mut budget = MAX_UNPACKED_BYTES;
        let mut files = untar_gz(bytes, &mut budget)?;
        let pos = files
            .iter()
            .position(|(n, _)| n == "manifest.mf")
            .ok_or_else(|| BundleError::Missing("manifest.mf".into()))?;
        let (_, manifest) = files.remove(pos);
        let manifest = text("manifest.mf", manifest)?;
        let mut sections = manifest.split("\n\n");
        let main = parse_section(sections.next().unwrap_or_default());
        let get = |m: &Vec<(String, String)>, k: &str| {
            m.iter()
                .find(|(a, _)| a == k)
                .map(|(_, v)| v.clone())
                .ok_or_else(|| BundleError::Manifest(format!("missing {k}")))
        };
        if get(&main, "Manifest-Version")? != "1.0" {
            return Err(BundleError::Manifest("Manifest-Version must be 1.0".into()));
        }
        let mut bundle = UsageBundle {
            created_by: get(&main, "Created-By").unwrap_or_default(),
            sa_name: get(&main, "Smart-Account")?,
            sa_id: get(&main, "Smart-Account-ID")?,
            timestamp: 0,
            vas: Vec::new(),
        };
        for section in sections {
            let s = parse_section(section);
            if s.is_empty() {
                continue;
            }
            let name = get(&s, "Name")?;
            let name = name.trim_start_matches('/');
            if bundle.timestamp == 0 {
                bundle.timestamp = name
                    .trim_start_matches("UD_VA_")
                    .split(['_', '.'])
                    .next()
                    .and_then(|t| t.parse().ok())
                    .unwrap_or(0);
            }
            let (_, inner) = files
                .iter()
                .find(|(n, _)| n == name)
                .ok_or_else(|| BundleError::Missing(name.to_owned()))?;
            let mut devices = Vec::new();
            for (fname, data) in untar_gz(inner, &mut budget)? {
                let device_id = device_id_of(&fname, "dev_")
                    .ok_or_else(|| BundleError::BadName(fname.clone(), "dev_<id>_<ts>.txt"))?;
                devices.push(DeviceFile {
                    device_id,
                    content: text(&fname, data)?,
                });
            }
            bundle.vas.push(VaUsage {
                va_name: get(&s, "Specification-VA")?,
                va_id: get(&s, "Specification-VA-ID")?,
                devices,
            });
        }
        if bundle.vas.is_empty() {
            return Err(BundleError::Manifest("names no virtual account".into()));
        }
        Ok(bundle)
    }
}

fn parse_section(s: &str) -> Vec<(String, String)> {
    s.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

/// `dev_<id>_<ts>.txt` -> `<id>` (ids may hold underscores; the timestamp is the last part).
fn device_id_of(name: &str, prefix: &str) -> Option<String> {
    let base = name.rsplit('/').next()?;
    let rest = base.strip_prefix(prefix)?.strip_suffix(".txt")?;
    let (id, ts) = rest.rsplit_once('_')?;
    (!id.is_empty() && ts.chars().all(|c| c.is_ascii_digit())).then(|| id.to_owned())
}

/// CSSM's answer to a usage bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckBundle {
    pub timestamp: i64,
    /// Per virtual account, the ACK document of each device.
    pub vas: Vec<(String, Vec<DeviceFile>)>,
}

impl AckBundle {
    pub fn file_name(&self) -> String {
        format!("ACK_UD_SA_{}.tar.gz", self.timestamp)
    }

    pub fn to_tar_gz(&self) -> Result<Vec<u8>, BundleError> {
        let mut entries = Vec::new();
        for (i, (_va, devices)) in self.vas.iter().enumerate() {
            let files: Vec<(String, Vec<u8>)> = devices
                .iter()
                .map(|d| {
                    (
                        format!("ACK_dev_{}_{}.txt", d.device_id, self.timestamp),
                        d.content.clone().into_bytes(),
                    )
                })
                .collect();
            entries.push((
                format!("ACK_UD_VA_{}_{}.tar.gz", self.timestamp, i),
                tar_gz(&files)?,
            ));
        }
        tar_gz(&entries)
    }

    /// Every device ACK in the bundle, whatever VA archive it came in.
    pub fn from_tar_gz(bytes: &[u8]) -> Result<Vec<DeviceFile>, BundleError> {
        let mut budget = MAX_UNPACKED_BYTES;
        let mut out = Vec::new();
        let outer = untar_gz(bytes, &mut budget)?;
        for (name, data) in outer {
            let base = name.rsplit('/').next().unwrap_or(&name).to_owned();
            if base.starts_with("ACK_UD_VA_") && base.ends_with(".tar.gz") {
                for (fname, d) in untar_gz(&data, &mut budget)? {
                    out.push(ack_file(fname, d)?);
                }
            } else if base.starts_with("ACK_dev_") {
                out.push(ack_file(name, data)?);
            } else {
                return Err(BundleError::BadName(name, "ACK_UD_VA_<..>.tar.gz"));
            }
        }
        if out.is_empty() {
            return Err(BundleError::Missing("ACK_dev_* file".into()));
        }
        Ok(out)
    }
}

/// Every file of an ACK bundle as (name, bytes), whatever it is called: the files of each inner
/// `*.tar.gz` (one level down) and any plain file beside them. Only an archive that cannot be
/// read at all, or one too large, is an error; judging each file is the caller's.
pub fn ack_bundle_files(bytes: &[u8]) -> Result<Vec<(String, Vec<u8>)>, BundleError> {
    let mut budget = MAX_UNPACKED_BYTES;
    let mut out = Vec::new();
    for (name, data) in untar_gz(bytes, &mut budget)? {
        if name.ends_with(".tar.gz") || name.ends_with(".tgz") {
            out.extend(untar_gz(&data, &mut budget)?);
        } else {
            out.push((name, data));
        }
    }
    Ok(out)
}

/// Checks what Tally checks of an ACK document, which it otherwise treats as opaque (CSSM's
/// content is unpublished): well-formed XML whose root element is `<smartLicense>`.
pub fn check_ack_document(text: &str) -> Result<(), String> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(text);
    let mut depth = 0usize;
    let mut root = None::<String>;
    loop {
        match reader
            .read_event()
            .map_err(|e| format!("not well-formed XML: {e}"))?
        {
            Event::Start(e) => {
                if depth == 0 {
                    if root.is_some() {
                        return Err("more than one root element".into());
                    }
                    root = Some(String::from_utf8_lossy(e.name().as_ref()).into_owned());
                }
                depth += 1;
            }
            Event::Empty(e) if depth == 0 => {
                if root.is_some() {
                    return Err("more than one root element".into());
                }
                root = Some(String::from_utf8_lossy(e.name().as_ref()).into_owned());
            }
            Event::End(_) => depth = depth.saturating_sub(1),
            Event::Text(t) if depth == 0 => {
                let bytes: &[u8] = t.as_ref();
                if !bytes.iter().all(|b| b.is_ascii_whitespace()) {
                    return Err("text outside the root element".into());
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if depth != 0 {
        return Err("unclosed element".into());
    }
    match root {
        Some(r) if r == "smartLicense" => Ok(()),
        Some(r) => Err(format!("root element is <{r}>, not <smartLicense>")),
        None => Err("no root element".into()),
    }
}

/// UDIs written out in a document Tally does not otherwise read: Cisco's `PID:<pid>,SN:<sn>`
/// text, and `udi_pid` / `udi_serial_number` pairs (JSON, escaped JSON or XML elements).
pub fn udis_in(text: &str) -> Vec<crate::Udi> {
    fn value_after(s: &str) -> Option<(&str, &str)> {
        let s = s.trim_start_matches(['"', '\\', ':', ' ', '>', '=']);
        let end = s
            .find(['"', '\\', ',', '}', '<', ' ', '\n', ';'])
            .unwrap_or(s.len());
        (end > 0).then(|| (&s[..end], &s[end..]))
    }
    let mut out: Vec<crate::Udi> = Vec::new();
    let mut push = |pid: &str, sn: &str| {
        if let Ok(u) = crate::Udi::new(pid, sn)
            && !out.contains(&u)
        {
            out.push(u);
        }
    };
    let mut rest = text;
    while let Some(i) = rest.find("PID:") {
        rest = &rest[i + 4..];
        if let Some((pid, after)) = value_after(rest)
            && let Some(sn) = after
                .strip_prefix(",SN:")
                .or_else(|| after.strip_prefix(", SN:"))
            && let Some((sn, _)) = value_after(sn)
        {
            push(pid, sn);
        }
    }
    let mut rest = text;
    while let Some(i) = rest.find("udi_pid") {
        rest = &rest[i + 7..];
        if let Some((pid, after)) = value_after(rest)
            && let Some(j) = after.find("udi_serial_number")
            && let Some((sn, _)) = value_after(&after[j + 17..])
        {
            push(pid, sn);
        }
    }
    out
}

fn ack_file(name: String, data: Vec<u8>) -> Result<DeviceFile, BundleError> {
    let device_id = device_id_of(&name, "ACK_dev_")
        .ok_or_else(|| BundleError::BadName(name.clone(), "ACK_dev_<id>_<ts>.txt"))?;
    Ok(DeviceFile {
        device_id,
        content: text(&name, data)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_bundle_round_trip() {
        let b = UsageBundle {
            created_by: "Tally 0.1".into(),
            sa_name: "acme.com".into(),
            sa_id: "1001".into(),
            timestamp: 1_700_000_000,
            vas: vec![
                VaUsage {
                    va_name: "Campus".into(),
                    va_id: "2001".into(),
                    devices: vec![DeviceFile {
                        device_id: "0190a_b".into(),
                        content: "<smartLicense>x</smartLicense>".into(),
                    }],
                },
                VaUsage {
                    va_name: "Branch".into(),
                    va_id: "2002".into(),
                    devices: vec![],
                },
            ],
        };
        let bytes = b.to_tar_gz().unwrap();
        assert_eq!(UsageBundle::from_tar_gz(&bytes).unwrap(), b);
    }

    #[test]
    fn opaque_ack_documents_are_checked_at_the_root_only() {
        assert_eq!(
            check_ack_document("<smartLicense><anything/>x</smartLicense>"),
            Ok(())
        );
        assert_eq!(
            check_ack_document("<?xml version=\"1.0\"?>\n<smartLicense/>\n"),
            Ok(())
        );
        assert!(
            check_ack_document("<other/>")
                .unwrap_err()
                .contains("<other>")
        );
        assert!(check_ack_document("<smartLicense>").is_err());
        assert!(check_ack_document("").is_err());
        assert!(check_ack_document("<smartLicense/><smartLicense/>").is_err());
        let u = |p, s| crate::Udi::new(p, s).unwrap();
        assert_eq!(
            udis_in("<d>PID:C9300-48P,SN:FCW1</d>"),
            vec![u("C9300-48P", "FCW1")]
        );
        assert_eq!(
            udis_in(r#"{\"sudi\":{\"udi_pid\":\"C8000V\",\"udi_serial_number\":\"AB12\"}}"#),
            vec![u("C8000V", "AB12")]
        );
        assert_eq!(
            udis_in("<udi_pid>ISR4331</udi_pid><udi_serial_number>FDO9</udi_serial_number>"),
            vec![u("ISR4331", "FDO9")]
        );
        assert!(udis_in("<smartLicense/>").is_empty());
    }

    #[test]
    fn ack_bundle_round_trip_and_errors() {
        let a = AckBundle {
            timestamp: 5,
            vas: vec![(
                "Campus".into(),
                vec![DeviceFile {
                    device_id: "d1".into(),
                    content: "<smartLicense/>".into(),
                }],
            )],
        };
        let files = AckBundle::from_tar_gz(&a.to_tar_gz().unwrap()).unwrap();
        assert_eq!(files, a.vas[0].1);
        assert!(matches!(
            AckBundle::from_tar_gz(b"not gzip"),
            Err(BundleError::Archive(_))
        ));
        assert!(matches!(
            UsageBundle::from_tar_gz(&tar_gz(&[("x".into(), vec![])]).unwrap()),
            Err(BundleError::Missing(_))
        ));
    }
}
