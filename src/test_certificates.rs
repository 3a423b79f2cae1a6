//! Certificates for unit tests: made at run time, never stored.

use openssl::asn1::Asn1Time;
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::PKey;
use openssl::x509::extension::SubjectAlternativeName;
use openssl::x509::{X509NameBuilder, X509};

/// A self-signed P-256 certificate for `name` (its common name and a DNS
/// subjectAltName), valid for a day, and its key (PKCS#8), as PEM: its own
/// CA.
pub(crate) fn self_signed(name: &str) -> (Vec<u8>, Vec<u8>) {
    self_signed_with(name, |san| {
        san.dns(name);
    })
}

/// A self-signed P-256 certificate with the common name `common_name` and
/// the subjectAltNames `names` adds, valid for a day, and its key (PKCS#8),
/// as PEM: its own CA.
pub(crate) fn self_signed_with(
    common_name: &str,
    names: impl FnOnce(&mut SubjectAlternativeName),
) -> (Vec<u8>, Vec<u8>) {
    let mut alt_names = SubjectAlternativeName::new();
    names(&mut alt_names);
    certificate(common_name, Some(alt_names))
}

/// A self-signed P-256 certificate with the common name `common_name` and
/// no subjectAltName extension, as [`self_signed_with`] makes them.
pub(crate) fn self_signed_without_alt_names(common_name: &str) -> (Vec<u8>, Vec<u8>) {
    certificate(common_name, None)
}

fn certificate(common_name: &str, alt_names: Option<SubjectAlternativeName>) -> (Vec<u8>, Vec<u8>) {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    let key = PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap();
    let mut subject = X509NameBuilder::new().unwrap();
    subject.append_entry_by_text("CN", common_name).unwrap();
    let subject = subject.build();
    let mut cert = X509::builder().unwrap();
    cert.set_version(2).unwrap();
    cert.set_subject_name(&subject).unwrap();
    cert.set_issuer_name(&subject).unwrap();
    cert.set_pubkey(&key).unwrap();
    cert.set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    cert.set_not_after(&Asn1Time::days_from_now(1).unwrap())
        .unwrap();
    if let Some(alt_names) = alt_names {
        let extension = alt_names.build(&cert.x509v3_context(None, None)).unwrap();
        cert.append_extension(extension).unwrap();
    }
    cert.sign(&key, MessageDigest::sha256()).unwrap();
    (
        cert.build().to_pem().unwrap(),
        key.private_key_to_pem_pkcs8().unwrap(),
    )
}
