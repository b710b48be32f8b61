//! Mints a sealed session cookie value, exactly as the preauth filter seals it,
//! for benchmarks and manual tests:
//!
//! `mint-session KEY_BASE64 APP_ID [COOKIE_NAME] [GROUPS_COMMA_SEPARATED] [TTL_SECONDS]`
//!
//! Prints `COOKIE_NAME=VALUE`. The nonce comes from /dev/urandom.

use anyhow::{anyhow, Context, Result};
use base64::Engine as _;
use portcullis_core::identity::Identity;
use portcullis_core::oidc::session::encode_identity;
use portcullis_core::seal::Sealer;
use std::io::Read;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let key = args
        .first()
        .context("usage: mint-session KEY_BASE64 APP_ID [COOKIE_NAME] [GROUPS] [TTL]")?;
    let app = args.get(1).context("missing APP_ID")?;
    let name = args.get(2).map_or("__Host-portcullis", String::as_str);
    let groups: Vec<String> = args
        .get(3)
        .map(|g| {
            g.split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let ttl: u64 = args.get(4).map_or(Ok(3600), |t| t.parse())?;
    let key: [u8; 32] = base64::engine::general_purpose::STANDARD
        .decode(key)?
        .try_into()
        .map_err(|_| anyhow!("the key must be 32 bytes"))?;
    let sealer = Sealer::new(&[key]).context("no key")?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let identity = Identity {
        sub: "u-bench".into(),
        name: Some("bench".into()),
        email: Some("bench@example.com".into()),
        groups,
        amr: vec!["pwd".into(), "otp".into(), "mfa".into()],
        acr: Some("urn:portcullis:mfa".into()),
        auth_time: Some(now),
        iat: now,
        exp: now + ttl,
        ..Identity::default()
    };
    let mut nonce = [0u8; portcullis_core::seal::SEAL_RANDOM_LEN];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut nonce)?;
    let value = sealer
        .seal(name, app, &encode_identity(&identity), nonce)
        .map_err(|e| anyhow!("{e}"))?;
    println!("{name}={value}");
    Ok(())
}
