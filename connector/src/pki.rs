//! Certificates: the edge's connector CA, CSRs, connector identities read from
//! certificates, SPKI pins and the TLS verifiers built on them.

use std::fs;
use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};

/// A certificate or key problem.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// PEM or DER that does not parse.
    #[error("bad certificate or key: {0}")]
    Parse(String),
    /// rcgen refused to build or sign.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused a configuration.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The ring crypto provider used everywhere.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Parses every certificate in a PEM text.
pub fn parse_certs_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PkiError::Parse(e.to_string()))
}

/// Parses the first private key in a PEM text.
pub fn parse_key_pem(pem: &str) -> Result<PrivateKeyDer<'static>, PkiError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            PkiError::Parse("no private key in PEM".into())
        }
        e => PkiError::Parse(e.to_string()),
    })
}

/// Writes `contents` to a new temporary file beside `path` (mode 0600, synced) and
/// returns its path. The name is unique to this process and call, so concurrent
/// writers (two edges sharing a state directory) never write into each other's file.
fn write_temp(path: &Path, contents: &[u8]) -> Result<PathBuf, PkiError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let unique: u64 = rand::random();
    let tmp = path.with_file_name(format!(".{name}.{}.{unique:016x}.tmp", std::process::id()));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    let written = f.write_all(contents).and_then(|()| f.sync_all());
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(io_err(&tmp)(e));
    }
    Ok(tmp)
}

fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent() {
        if let Ok(d) = fs::File::open(if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        }) {
            let _ = d.sync_all();
        }
    }
}

/// Writes a file readable by its owner only (mode 0600), atomically (temp file,
/// fsync, rename, fsync of the directory): a crash leaves the old file or the new one.
pub fn write_private(path: &Path, contents: &[u8]) -> Result<(), PkiError> {
    let tmp = write_temp(path, contents)?;
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(io_err(path)(e));
    }
    sync_dir(path);
    Ok(())
}

/// Creates `path` with `contents` (mode 0600) only if it does not exist, in one
/// step (a hard link of a synced temporary file): `Ok(false)` when another
/// process created it first.
fn create_private_exclusive(path: &Path, contents: &[u8]) -> Result<bool, PkiError> {
    let tmp = write_temp(path, contents)?;
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            sync_dir(path);
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// SHA-256 of the SubjectPublicKeyInfo of a certificate.
pub fn spki_sha256(cert: &CertificateDer<'_>) -> Result<[u8; 32], PkiError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| PkiError::Parse(e.to_string()))?;
    Ok(Sha256::digest(parsed.tbs_certificate.subject_pki.raw).into())
}

/// SHA-256 of a certificate's DER, lower-case hex (the CA fingerprint connectors pin).
pub fn fingerprint_hex(cert: &CertificateDer<'_>) -> String {
    Sha256::digest(cert.as_ref())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn to_offset(t: SystemTime) -> time::OffsetDateTime {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    time::OffsetDateTime::from_unix_timestamp(secs).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

/// What a connector certificate says about its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectorIdentity {
    /// Connector id (subject CN).
    pub id: String,
    /// Connector group (subject OU).
    pub group: String,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
    /// Serial number, hex.
    pub serial: String,
}

impl ConnectorIdentity {
    /// Reads the identity from a connector certificate.
    pub fn from_cert(cert: &CertificateDer<'_>) -> Result<Self, PkiError> {
        let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
            .map_err(|e| PkiError::Parse(e.to_string()))?;
        let subject = parsed.subject();
        let cn = subject
            .iter_common_name()
            .next()
            .and_then(|a| a.as_str().ok())
            .ok_or_else(|| PkiError::Parse("certificate has no CN".into()))?;
        let ou = subject
            .iter_organizational_unit()
            .next()
            .and_then(|a| a.as_str().ok())
            .ok_or_else(|| PkiError::Parse("certificate has no OU (group)".into()))?;
        let ts = |t: i64| UNIX_EPOCH + Duration::from_secs(t.max(0) as u64);
        Ok(Self {
            id: cn.to_string(),
            group: ou.to_string(),
            not_before: ts(parsed.validity().not_before.timestamp()),
            not_after: ts(parsed.validity().not_after.timestamp()),
            serial: parsed.raw_serial_as_string(),
        })
    }
}

/// A fresh key pair and a CSR for it, both PEM: `(key_pem, csr_pem)`.
pub fn new_key_and_csr(name: &str) -> Result<(String, String), PkiError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    let csr = params.serialize_request(&key)?;
    Ok((key.serialize_pem(), csr.pem()?))
}

/// The edge's connector CA.
pub struct EdgeCa {
    issuer: Issuer<'static, KeyPair>,
    /// CA certificate, DER.
    pub cert_der: CertificateDer<'static>,
    /// CA certificate, PEM.
    pub cert_pem: String,
}

impl std::fmt::Debug for EdgeCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EdgeCa")
            .field("fingerprint", &fingerprint_hex(&self.cert_der))
            .finish_non_exhaustive()
    }
}

/// File name of the CA certificate in the edge's state directory.
pub const CA_CERT_FILE: &str = "connector-ca.pem";
/// File name of the CA key in the edge's state directory.
pub const CA_KEY_FILE: &str = "connector-ca-key.pem";

impl EdgeCa {
    /// Loads the CA from `dir`, or creates it (key mode 0600) on first start.
    ///
    /// Several edge processes may start at once on one state directory (replicas
    /// sharing the CA): the first to create the key file creates the CA, the others
    /// wait for its certificate and load it.
    pub fn load_or_create(dir: &Path) -> Result<Self, PkiError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        if !key_path.exists() {
            if let Some(created) = Self::create(&key_path, &cert_path)? {
                return Ok(created);
            }
        }
        // The key is there; its certificate is written right after it.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !cert_path.exists() {
            if std::time::Instant::now() > deadline {
                return Err(PkiError::Parse(format!(
                    "{} exists without {}: the CA's creation was interrupted; remove the key \
                     (no connector can have a certificate from it) and start again",
                    key_path.display(),
                    cert_path.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let cert_pem = fs::read_to_string(&cert_path).map_err(io_err(&cert_path))?;
        let key_pem = fs::read_to_string(&key_path).map_err(io_err(&key_path))?;
        let key = KeyPair::from_pem(&key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key)?;
        let cert_der = parse_certs_pem(&cert_pem)?
            .into_iter()
            .next()
            .ok_or_else(|| PkiError::Parse(format!("{}: no certificate", cert_path.display())))?;
        Ok(Self {
            issuer,
            cert_der,
            cert_pem,
        })
    }

    /// Makes a new CA and publishes its key (exclusively) and then its certificate;
    /// `None` when another process published a key first.
    fn create(key_path: &Path, cert_path: &Path) -> Result<Option<Self>, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "Portcullis connector CA");
        dn.push(DnType::OrganizationName, "Portcullis");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = SystemTime::now();
        params.not_before = to_offset(now - Duration::from_secs(3600));
        params.not_after = to_offset(now + Duration::from_secs(10 * 365 * 86_400));
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key)?;
        if !create_private_exclusive(key_path, key.serialize_pem().as_bytes())? {
            return Ok(None);
        }
        let cert_pem = cert.pem();
        let tmp = write_temp(cert_path, cert_pem.as_bytes())?;
        {
            use std::os::unix::fs::PermissionsExt as _;
            let _ = fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644));
        }
        if let Err(e) = fs::rename(&tmp, cert_path) {
            let _ = fs::remove_file(&tmp);
            return Err(io_err(cert_path)(e));
        }
        sync_dir(cert_path);
        Ok(Some(Self {
            issuer: Issuer::new(params, key),
            cert_der: cert.der().clone(),
            cert_pem,
        }))
    }

    /// SHA-256 fingerprint (hex) of the CA certificate.
    pub fn fingerprint(&self) -> String {
        fingerprint_hex(&self.cert_der)
    }

    /// A fresh server certificate for `names` (DNS names or IPs) with its key: the chain
    /// sent is `[server, CA]` so connectors pinning the CA fingerprint find it.
    pub fn issue_server_cert(
        &self,
        names: &[String],
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            names
                .first()
                .map(String::as_str)
                .unwrap_or("portcullis-edge"),
        );
        params.distinguished_name = dn;
        for n in names {
            if let Ok(ip) = n.parse::<IpAddr>() {
                params.subject_alt_names.push(SanType::IpAddress(ip));
            } else {
                params
                    .subject_alt_names
                    .push(SanType::DnsName(n.clone().try_into()?));
            }
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let now = SystemTime::now();
        params.not_before = to_offset(now - Duration::from_secs(3600));
        params.not_after = to_offset(now + Duration::from_secs(365 * 86_400));
        params.serial_number = Some(random_serial());
        let cert = params.signed_by(&key, &self.issuer)?;
        let key_der =
            PrivateKeyDer::try_from(key.serialize_der()).map_err(|e| PkiError::Parse(e.into()))?;
        Ok((vec![cert.der().clone(), self.cert_der.clone()], key_der))
    }

    /// Signs a connector CSR: the certificate names the connector `id` (CN and a
    /// `urn:portcullis:connector:<id>` URI) and its `group` (OU), valid from `now` for `days`.
    pub fn sign_connector_csr(
        &self,
        csr_pem: &str,
        id: &str,
        group: &str,
        days: u32,
        now: SystemTime,
    ) -> Result<String, PkiError> {
        let not_after = now + Duration::from_secs(u64::from(days) * 86_400);
        self.sign_connector_csr_until(csr_pem, id, group, not_after, now)
    }

    /// [`EdgeCa::sign_connector_csr`] valid until `not_after`.
    pub fn sign_connector_csr_until(
        &self,
        csr_pem: &str,
        id: &str,
        group: &str,
        not_after: SystemTime,
        now: SystemTime,
    ) -> Result<String, PkiError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, id);
        dn.push(DnType::OrganizationalUnitName, group);
        params.distinguished_name = dn;
        params.subject_alt_names = vec![SanType::URI(
            format!("urn:portcullis:connector:{id}").try_into()?,
        )];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.not_before = to_offset(now - Duration::from_secs(60));
        params.not_after = to_offset(not_after);
        params.serial_number = Some(random_serial());
        let signed = CertificateSigningRequestParams {
            params,
            public_key: csr.public_key,
        }
        .signed_by(&self.issuer)?;
        Ok(signed.pem())
    }

    /// Signs an arbitrary connector certificate (tests: expired certificates).
    pub fn sign_with_validity(
        &self,
        csr_pem: &str,
        id: &str,
        group: &str,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<String, PkiError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, id);
        dn.push(DnType::OrganizationalUnitName, group);
        params.distinguished_name = dn;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = to_offset(not_before);
        params.not_after = to_offset(not_after);
        params.serial_number = Some(random_serial());
        Ok(CertificateSigningRequestParams {
            params,
            public_key: csr.public_key,
        }
        .signed_by(&self.issuer)?
        .pem())
    }
}

/// Why a pinned TLS peer was refused (rustls carries it as `Error::General`).
pub const PIN_MISMATCH: &str = "public key not in the pinned set";

/// Verifies a TLS server against an optional CA bundle and an optional set of SPKI
/// SHA-256 pins: with a CA bundle the chain and name must verify; with pins, some
/// certificate of the presented chain must carry a pinned key. At least one is set.
#[derive(Debug)]
pub struct PinnedVerifier {
    webpki: Option<Arc<dyn ServerCertVerifier>>,
    pins: Vec<[u8; 32]>,
    provider: Arc<CryptoProvider>,
}

impl PinnedVerifier {
    /// A verifier for `roots` (may be empty when `pins` is not) and `pins`.
    pub fn new(roots: Vec<CertificateDer<'static>>, pins: Vec<[u8; 32]>) -> Result<Self, PkiError> {
        let provider = provider();
        let webpki: Option<Arc<dyn ServerCertVerifier>> = if roots.is_empty() {
            None
        } else {
            let mut store = RootCertStore::empty();
            for r in roots {
                store.add(r)?;
            }
            Some(
                rustls::client::WebPkiServerVerifier::builder_with_provider(
                    Arc::new(store),
                    provider.clone(),
                )
                .build()
                .map_err(|e| PkiError::Parse(e.to_string()))?,
            )
        };
        if webpki.is_none() && pins.is_empty() {
            return Err(PkiError::Parse("neither CA bundle nor pins".into()));
        }
        Ok(Self {
            webpki,
            pins,
            provider,
        })
    }
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(v) = &self.webpki {
            v.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)?;
        }
        if !self.pins.is_empty() {
            let matched = std::iter::once(end_entity)
                .chain(intermediates.iter())
                .filter_map(|c| spki_sha256(c).ok())
                .any(|h| self.pins.contains(&h));
            if !matched {
                return Err(rustls::Error::General(PIN_MISMATCH.into()));
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Verifies the edge during registration by the SHA-256 fingerprint of its CA
/// certificate (sent in the chain): the CA found by fingerprint becomes the only root.
#[derive(Debug)]
pub struct CaFingerprintVerifier {
    fingerprint: String,
    provider: Arc<CryptoProvider>,
}

impl CaFingerprintVerifier {
    /// A verifier for the hex `fingerprint` (colons allowed, any case).
    pub fn new(fingerprint: &str) -> Self {
        Self {
            fingerprint: fingerprint.replace(':', "").to_ascii_lowercase(),
            provider: provider(),
        }
    }
}

impl ServerCertVerifier for CaFingerprintVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| fingerprint_hex(c) == self.fingerprint)
            .ok_or_else(|| rustls::Error::General("edge CA fingerprint does not match".into()))?;
        let mut store = RootCertStore::empty();
        store.add(ca.clone().into_owned())?;
        let v = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(store),
            self.provider.clone(),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        v.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edges_starting_together_on_one_state_directory_share_one_ca() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("edge");
        let starts: Vec<_> = (0..8)
            .map(|_| {
                let path = path.clone();
                std::thread::spawn(move || EdgeCa::load_or_create(&path).map(|ca| ca.fingerprint()))
            })
            .collect();
        let prints: Vec<String> = starts
            .into_iter()
            .map(|t| t.join().unwrap().unwrap())
            .collect();
        assert!(prints.iter().all(|p| p == &prints[0]), "{prints:?}");
        let again = EdgeCa::load_or_create(&path).unwrap();
        assert_eq!(again.fingerprint(), prints[0]);
        use std::os::unix::fs::PermissionsExt as _;
        let mode = fs::metadata(path.join(CA_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let left: Vec<_> = fs::read_dir(&path)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(left.is_empty(), "temporary files left: {left:?}");
    }
}
