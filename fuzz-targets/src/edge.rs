//! The edge's registration request and the CSRs it signs.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use portcullis_connector::edge::RegisterRequest;
use portcullis_connector::pki::{ConnectorIdentity, EdgeCa};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

fn ca() -> &'static EdgeCa {
    static CA: OnceLock<EdgeCa> = OnceLock::new();
    CA.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("portcullis-fuzz-ca-{}", std::process::id()));
        match EdgeCa::load_or_create(&dir) {
            Ok(ca) => ca,
            Err(e) => panic!("test CA in {}: {e}", dir.display()),
        }
    })
}

fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

/// Signs `csr_pem`; whatever the CSR asked for, the certificate names the
/// edge's id and group only.
fn sign(csr_pem: &str) {
    let Ok(pem) = ca().sign_connector_csr(csr_pem, "c-0011223344556677", "default", 30, now())
    else {
        return;
    };
    let Ok(certs) = portcullis_connector::pki::parse_certs_pem(&pem) else {
        panic!("the edge issued a certificate it cannot parse")
    };
    let Some(cert) = certs.first() else {
        panic!("the edge issued no certificate")
    };
    let Ok(id) = ConnectorIdentity::from_cert(cert) else {
        panic!("the edge issued a certificate without identity")
    };
    assert_eq!(id.id, "c-0011223344556677");
    assert_eq!(id.group, "default");
}

/// The registration body (JSON) and the CSR inside it.
pub fn register(data: &[u8]) {
    let Ok(req) = serde_json::from_slice::<RegisterRequest>(data) else {
        return;
    };
    sign(&req.csr_pem);
}

/// Arbitrary DER as a CSR: random bytes never carry a valid self-signature,
/// and mutated real CSRs must not crash the parser.
pub fn csr(data: &[u8]) {
    let pem = format!(
        "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
        STANDARD.encode(data)
    );
    sign(&pem);
}
