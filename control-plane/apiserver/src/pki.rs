//! `skiff-master init`'s PKI: a cluster CA, the API server's serving certificate (with the
//! master addresses as SANs), client certificates (CN = user, O = group) and kubeconfigs.

use std::path::{Path, PathBuf};

use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// A PKI operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("generating certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io { path: path.display().to_string(), source }
}

/// The cluster CA: its key and a certificate usable as issuer.
pub struct Ca {
    key: KeyPair,
    cert: rcgen::Certificate,
}

fn ca_params() -> Result<CertificateParams, rcgen::Error> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "skiff-ca");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(p)
}

impl Ca {
    pub fn generate() -> Result<Self, PkiError> {
        let key = KeyPair::generate()?;
        let cert = ca_params()?.self_signed(&key)?;
        Ok(Self { key, cert })
    }

    /// Loads the CA key; the issuer certificate is rebuilt from the same name and key, which is
    /// all a signature chain needs.
    pub fn load(dir: &Path) -> Result<Self, PkiError> {
        let path = dir.join("ca.key");
        let pem = std::fs::read_to_string(&path).map_err(io(&path))?;
        let key = KeyPair::from_pem(&pem)?;
        let cert = ca_params()?.self_signed(&key)?;
        Ok(Self { key, cert })
    }

    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    /// A serving certificate for `sans` (IP addresses and DNS names).
    pub fn issue_server(&self, sans: &[String]) -> Result<(String, String), PkiError> {
        let mut p = CertificateParams::new(sans.to_vec())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "kube-apiserver");
        p.distinguished_name = dn;
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        let key = KeyPair::generate()?;
        let cert = p.signed_by(&key, &self.cert, &self.key)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// A client certificate for `user` in `groups`.
    pub fn issue_client(&self, user: &str, groups: &[&str]) -> Result<(String, String), PkiError> {
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        for g in groups {
            dn.push(DnType::OrganizationName, *g);
        }
        dn.push(DnType::CommonName, user);
        p.distinguished_name = dn;
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        let key = KeyPair::generate()?;
        let cert = p.signed_by(&key, &self.cert, &self.key)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// A kubeconfig with embedded credentials.
pub fn kubeconfig(server: &str, ca_pem: &str, cert_pem: &str, key_pem: &str, user: &str) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: skiff\n  cluster:\n    server: {server}\n    certificate-authority-data: {}\ncontexts:\n- name: skiff\n  context:\n    cluster: skiff\n    user: {user}\n    namespace: default\ncurrent-context: skiff\nusers:\n- name: {user}\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\n",
        b64(ca_pem),
        b64(cert_pem),
        b64(key_pem)
    )
}

/// Paths `init` writes under the PKI directory.
pub struct PkiFiles {
    pub ca_cert: PathBuf,
    pub serving_cert: PathBuf,
    pub serving_key: PathBuf,
    pub admin_kubeconfig: PathBuf,
}

impl PkiFiles {
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            ca_cert: dir.join("ca.crt"),
            serving_cert: dir.join("apiserver.crt"),
            serving_key: dir.join("apiserver.key"),
            admin_kubeconfig: dir.join("admin.kubeconfig"),
        }
    }
}

fn write(path: &Path, data: &str, private: bool) -> Result<(), PkiError> {
    std::fs::write(path, data).map_err(io(path))?;
    if private {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io(path))?;
    }
    Ok(())
}

/// Creates the CA, the serving certificate for `addresses` (plus the in-cluster names and the
/// first service IP), an admin client certificate (`kubernetes-admin`, `system:masters`) and
/// `admin.kubeconfig` pointing at `server`. Existing files are kept (a CA is never replaced).
pub fn init(
    dir: &Path,
    addresses: &[String],
    service_ip: &str,
    server: &str,
) -> Result<PkiFiles, PkiError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let files = PkiFiles::in_dir(dir);
    let ca = if dir.join("ca.key").exists() {
        Ca::load(dir)?
    } else {
        let ca = Ca::generate()?;
        write(&dir.join("ca.key"), &ca.key.serialize_pem(), true)?;
        write(&files.ca_cert, &ca.cert_pem(), false)?;
        ca
    };
    let ca_pem = std::fs::read_to_string(&files.ca_cert).map_err(io(&files.ca_cert))?;
    let mut sans: Vec<String> = addresses.to_vec();
    for extra in [
        "localhost",
        "127.0.0.1",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
        service_ip,
    ] {
        if !sans.iter().any(|s| s == extra) {
            sans.push(extra.to_owned());
        }
    }
    let (cert, key) = ca.issue_server(&sans)?;
    write(&files.serving_cert, &cert, false)?;
    write(&files.serving_key, &key, true)?;
    let (acert, akey) = ca.issue_client("kubernetes-admin", &["system:masters"])?;
    write(&dir.join("admin.crt"), &acert, false)?;
    write(&dir.join("admin.key"), &akey, true)?;
    write(
        &files.admin_kubeconfig,
        &kubeconfig(server, &ca_pem, &acert, &akey, "kubernetes-admin"),
        true,
    )?;
    Ok(files)
}
