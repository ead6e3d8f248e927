//! The one place the tests make certificates (rcgen): test CAs, leaf certificates for policy
//! hosts, and the rustls server configs that present them. The [`World`](super::World)'s HTTPS
//! server and the scripted hostile server (`scripted_https`) both build their chains here, so a
//! leaf means the same thing wherever a test meets it.
//!
//! Every key is ECDSA P-256. A leaf carries its names as DNS subject alternative names (RFC 8461
//! §3.3 checks the policy host against them), the first one also as the common name, and is a
//! TLS server certificate only (not a CA, `digitalSignature`, `serverAuth`).

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::ServerConfig;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A CA that can sign: its certificate and key.
pub type Issuer = CertifiedIssuer<'static, KeyPair>;

/// A fresh ECDSA P-256 key.
pub fn new_key() -> KeyPair {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .expect("certs: cannot generate an ECDSA P-256 key")
}

/// Subject of a CA: organisation `org`, common name `cn`.
fn ca_params(org: &str, cn: &str, path_len: Option<u8>) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, org);
    dn.push(DnType::CommonName, cn);
    p.distinguished_name = dn;
    p.is_ca = match path_len {
        None => IsCa::Ca(BasicConstraints::Unconstrained),
        Some(n) => IsCa::Ca(BasicConstraints::Constrained(n)),
    };
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    // A root has no issuer to point at; an intermediate names its root.
    p.use_authority_key_identifier_extension = path_len.is_some();
    p
}

/// A self-signed root CA without a path-length limit.
pub fn root_ca(org: &str, cn: &str) -> Issuer {
    CertifiedIssuer::self_signed(ca_params(org, cn, None), new_key())
        .unwrap_or_else(|e| panic!("certs: cannot make the root CA {cn:?}: {e}"))
}

/// An intermediate CA signed by `parent`, allowed to sign leaves only (path length 0).
pub fn intermediate_ca(org: &str, cn: &str, parent: &Issuer) -> Issuer {
    CertifiedIssuer::signed_by(ca_params(org, cn, Some(0)), new_key(), parent)
        .unwrap_or_else(|e| panic!("certs: cannot make the intermediate CA {cn:?}: {e}"))
}

/// When a leaf is valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Validity {
    /// rcgen's default window (1975 to 4096): valid whenever the tests run.
    Always,
    /// From 1 January of the first year to 1 January of the second (UTC).
    Years(i32, i32),
}

/// A leaf certificate and its key.
pub struct Leaf {
    pub cert: CertificateDer<'static>,
    pub key: KeyPair,
}

fn leaf_params(names: &[&str], validity: Validity) -> CertificateParams {
    let sans: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut p = CertificateParams::new(sans)
        .unwrap_or_else(|e| panic!("certs: cannot make certificate params for {names:?}: {e}"));
    let mut dn = DistinguishedName::new();
    if let Some(first) = names.first() {
        dn.push(DnType::CommonName, *first);
    }
    p.distinguished_name = dn;
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    p.use_authority_key_identifier_extension = true;
    if let Validity::Years(from, to) = validity {
        p.not_before = rcgen::date_time_ymd(from, 1, 1);
        p.not_after = rcgen::date_time_ymd(to, 1, 1);
    }
    p
}

/// A TLS server leaf for `names`, signed by `ca`.
pub fn leaf(ca: &Issuer, names: &[&str], validity: Validity) -> Leaf {
    let key = new_key();
    let cert = leaf_params(names, validity)
        .signed_by(&key, ca)
        .unwrap_or_else(|e| panic!("certs: cannot sign the leaf for {names:?}: {e}"));
    Leaf {
        cert: cert.der().clone(),
        key,
    }
}

/// A TLS server leaf for `names` that signs itself (no CA anywhere).
pub fn self_signed_leaf(names: &[&str], validity: Validity) -> Leaf {
    let key = new_key();
    let mut p = leaf_params(names, validity);
    p.use_authority_key_identifier_extension = false;
    let cert = p
        .self_signed(&key)
        .unwrap_or_else(|e| panic!("certs: cannot self-sign the leaf for {names:?}: {e}"));
    Leaf {
        cert: cert.der().clone(),
        key,
    }
}

/// A rustls server config (ring, the safe default TLS versions, no client authentication)
/// presenting `leaf` followed by `chain` (intermediates or roots the server sends along).
pub fn server_config(leaf: &Leaf, chain: &[&Issuer]) -> ServerConfig {
    let mut certs = vec![leaf.cert.clone()];
    certs.extend(chain.iter().map(|ca| ca.der().clone()));
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf.key.serialize_der()));
    ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("certs: ring supports the default TLS versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap_or_else(|e| panic!("certs: rustls refuses the chain: {e}"))
}
