//! Authentication: x509 client certificates (CN = user, O = groups) verified by the TLS layer
//! against the cluster CA, and bearer tokens from a token file (`token,user,uid,"g1,g2"`, the
//! kube-apiserver format). Anything else is anonymous and refused with 401.

use std::collections::HashMap;
use std::path::Path;

/// An authenticated identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
}

/// A token file that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("reading token file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("token file {path} line {line}: need at least token,user,uid")]
    Line { path: String, line: usize },
}

/// Static bearer tokens.
#[derive(Clone, Debug, Default)]
pub struct Tokens(HashMap<String, User>);

fn csv_fields(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    out.push(cur);
    out.into_iter().map(|s| s.trim().to_owned()).collect()
}

impl Tokens {
    pub fn parse(text: &str, path: &str) -> Result<Self, TokenFileError> {
        let mut map = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let f = csv_fields(line);
            if f.len() < 3 || f[0].is_empty() || f[1].is_empty() {
                return Err(TokenFileError::Line { path: path.to_owned(), line: i + 1 });
            }
            let groups = f
                .get(3)
                .map(|g| {
                    g.split(',')
                        .map(str::trim)
                        .filter(|g| !g.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default();
            map.insert(f[0].clone(), User { name: f[1].clone(), groups });
        }
        Ok(Self(map))
    }

    pub fn load(path: &Path) -> Result<Self, TokenFileError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|source| TokenFileError::Read { path: p.clone(), source })?;
        Self::parse(&text, &p)
    }

    pub fn user(&self, token: &str) -> Option<&User> {
        self.0.get(token)
    }
}

/// Reads one DER TLV at the start of `b`: (tag, contents, rest).
fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *b.first()?;
    let first = *b.get(1)?;
    let (len, hdr) = if first & 0x80 == 0 {
        (usize::from(first), 2)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | usize::from(*b.get(2 + i)?);
        }
        (len, 2 + n)
    };
    let end = hdr.checked_add(len)?;
    Some((tag, b.get(hdr..end)?, b.get(end..)?))
}

const OID_CN: &[u8] = &[0x55, 0x04, 0x03];
const OID_O: &[u8] = &[0x55, 0x04, 0x0a];

/// The user a client certificate (DER) names: CN is the user, every O a group.
pub fn user_from_cert(der: &[u8]) -> Option<User> {
    let (_, cert, _) = tlv(der)?;
    let (_, tbs, _) = tlv(cert)?;
    let mut rest = tbs;
    let (tag, _, r) = tlv(rest)?;
    if tag == 0xa0 {
        rest = r; // explicit version
    }
    // serial, signature algorithm, issuer, validity, then subject.
    for _ in 0..4 {
        rest = tlv(rest)?.2;
    }
    let (_, mut subject, _) = tlv(rest)?;
    let mut name = None;
    let mut groups = Vec::new();
    while !subject.is_empty() {
        let (_, mut rdn, next) = tlv(subject)?;
        subject = next;
        while !rdn.is_empty() {
            let (_, atv, n) = tlv(rdn)?;
            rdn = n;
            let (_, oid, v) = tlv(atv)?;
            let (_, val, _) = tlv(v)?;
            let val = String::from_utf8_lossy(val).into_owned();
            if oid == OID_CN {
                name = Some(val);
            } else if oid == OID_O {
                groups.push(val);
            }
        }
    }
    Some(User { name: name?, groups })
}

/// Identifies a request from its verified client certificate or bearer token.
pub fn authenticate(
    tokens: &Tokens,
    cert: Option<&[u8]>,
    authorization: Option<&str>,
) -> Option<User> {
    if let Some(token) = authorization.and_then(|h| h.strip_prefix("Bearer ")).map(str::trim) {
        return tokens.user(token).cloned();
    }
    let mut user = cert.and_then(user_from_cert)?;
    if !user.groups.iter().any(|g| g == "system:authenticated") {
        user.groups.push("system:authenticated".to_owned());
    }
    Some(user)
}

#[cfg(test)]
mod tests {
    use rustls_pki_types::pem::PemObject;

    use super::*;

    #[test]
    fn token_file_parses_groups() {
        let t =
            Tokens::parse("# comment\nabc,alice,1,\"dev,ops\"\nxyz,bob,2\n", "t").expect("valid");
        assert_eq!(
            t.user("abc"),
            Some(&User { name: "alice".into(), groups: vec!["dev".into(), "ops".into()] })
        );
        assert_eq!(t.user("xyz").map(|u| u.groups.len()), Some(0));
        assert!(Tokens::parse("onlytoken\n", "t").is_err());
        assert!(authenticate(&t, None, Some("Bearer nope")).is_none());
        assert!(authenticate(&t, None, None).is_none());
    }

    #[test]
    fn certificate_subject_names_the_user() {
        let pki = crate::pki::Ca::generate().expect("ca");
        let (cert_pem, _) =
            pki.issue_client("kubernetes-admin", &["system:masters"]).expect("client");
        let der =
            rustls_pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes()).expect("pem");
        let user = user_from_cert(&der).expect("parsed");
        assert_eq!(user.name, "kubernetes-admin");
        assert_eq!(user.groups, ["system:masters"]);
        assert!(user_from_cert(&[0x30, 0x85, 0xff]).is_none());
    }
}
