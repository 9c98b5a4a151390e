//! Signing keys: PEM private keys loaded into ring, the configured set
//! (`[oauth] signing_keys`), and new keys for `whosthat keygen`.
//!
//! Accepted: PKCS#8 (`BEGIN PRIVATE KEY`) P-256, Ed25519 or RSA keys, and
//! PKCS#1 (`BEGIN RSA PRIVATE KEY`) RSA keys of at least 2048 bits. SEC1
//! (`BEGIN EC PRIVATE KEY`) and encrypted keys are refused with the command
//! that converts them.

use std::fmt;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;

use super::Alg;
use super::jwks::{self, PublicJwk};

enum Pair {
    Es256(EcdsaKeyPair),
    Rs256(RsaKeyPair),
    EdDsa(Ed25519KeyPair),
}

/// One private key, ready to sign, with its public JWK and `kid`.
pub struct SigningKey {
    alg: Alg,
    /// The RFC 7638 thumbprint of the public key.
    kid: String,
    public: PublicJwk,
    pair: Pair,
}

impl fmt::Debug for SigningKey {
    // Never the private key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// Why a key file was refused (never its content).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("holds no PEM private key")]
    NoKey,
    #[error(
        "is an encrypted private key; whosthat reads unencrypted keys only (keep the file mode 0600)"
    )]
    Encrypted,
    #[error(
        "is a SEC1 EC key (BEGIN EC PRIVATE KEY); convert it with `openssl pkcs8 -topk8 -nocrypt -in KEY -out KEY.pk8`"
    )]
    Sec1,
    #[error("is an RSA key shorter than 2048 bits")]
    RsaTooSmall,
    #[error("is not a P-256 (ES256), Ed25519 (EdDSA) or RSA (RS256) private key")]
    Unsupported,
}

impl SigningKey {
    /// Reads one PEM private key.
    pub fn from_pem(pem: &[u8]) -> Result<SigningKey, KeyError> {
        let text = String::from_utf8_lossy(pem);
        if text.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") {
            return Err(KeyError::Encrypted);
        }
        let der = PrivateKeyDer::from_pem_slice(pem).map_err(|_| KeyError::NoKey)?;
        let pair = match &der {
            PrivateKeyDer::Pkcs8(p) => pkcs8_pair(p.secret_pkcs8_der())?,
            PrivateKeyDer::Pkcs1(p) => {
                Pair::Rs256(RsaKeyPair::from_der(p.secret_pkcs1_der()).map_err(rsa_rejected)?)
            }
            PrivateKeyDer::Sec1(_) => return Err(KeyError::Sec1),
            _ => return Err(KeyError::Unsupported),
        };
        Ok(SigningKey::new(pair))
    }

    fn new(pair: Pair) -> SigningKey {
        let (alg, public) = match &pair {
            Pair::Es256(p) => {
                // The uncompressed point: 0x04 || x || y (SEC 1 section 2.3.3).
                let point = p.public_key().as_ref();
                (
                    Alg::Es256,
                    PublicJwk::P256 {
                        x: point[1..33].to_vec(),
                        y: point[33..65].to_vec(),
                    },
                )
            }
            Pair::Rs256(p) => {
                let c: ring::rsa::PublicKeyComponents<Vec<u8>> = p.public().into();
                let minimal = |v: Vec<u8>| {
                    let zeros = v.iter().take_while(|b| **b == 0).count();
                    v[zeros..].to_vec()
                };
                (
                    Alg::Rs256,
                    PublicJwk::Rsa {
                        n: minimal(c.n),
                        e: minimal(c.e),
                    },
                )
            }
            Pair::EdDsa(p) => (
                Alg::EdDsa,
                PublicJwk::Ed25519 {
                    x: p.public_key().as_ref().to_vec(),
                },
            ),
        };
        SigningKey {
            alg,
            kid: public.thumbprint(),
            public,
            pair,
        }
    }

    pub fn alg(&self) -> Alg {
        self.alg
    }

    /// The key id: the RFC 7638 thumbprint of the public key.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn public_jwk(&self) -> &PublicJwk {
        &self.public
    }

    /// The public key as ring's verifiers take it: the uncompressed P-256
    /// point, the DER RSAPublicKey, or the 32 Ed25519 bytes.
    pub fn public_key_bytes(&self) -> Vec<u8> {
        match &self.pair {
            Pair::Es256(p) => p.public_key().as_ref().to_vec(),
            Pair::Rs256(p) => p.public().as_ref().to_vec(),
            Pair::EdDsa(p) => p.public_key().as_ref().to_vec(),
        }
    }

    /// The JWS signature of `input` (RFC 7518 section 3: ECDSA as r || s).
    pub fn sign(&self, input: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        match &self.pair {
            Pair::Es256(p) => p
                .sign(&rng, input)
                .expect("ECDSA signing with the OS random source")
                .as_ref()
                .to_vec(),
            Pair::Rs256(p) => {
                let mut sig = vec![0; p.public().modulus_len()];
                p.sign(&signature::RSA_PKCS1_SHA256, &rng, input, &mut sig)
                    .expect("RSA signing with the OS random source");
                sig
            }
            Pair::EdDsa(p) => p.sign(input).as_ref().to_vec(),
        }
    }
}

fn rsa_rejected(e: ring::error::KeyRejected) -> KeyError {
    if e.to_string().contains("TooSmall") {
        KeyError::RsaTooSmall
    } else {
        KeyError::Unsupported
    }
}

/// A PKCS#8 key: P-256, then Ed25519 (v1 as OpenSSL writes it, or v2), then RSA.
fn pkcs8_pair(der: &[u8]) -> Result<Pair, KeyError> {
    let rng = SystemRandom::new();
    if let Ok(p) = EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng)
    {
        return Ok(Pair::Es256(p));
    }
    if let Ok(p) = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der) {
        return Ok(Pair::EdDsa(p));
    }
    RsaKeyPair::from_pkcs8(der)
        .map(Pair::Rs256)
        .map_err(rsa_rejected)
}

/// The configured signing keys, in order: the first signs assertions, all are
/// published (so a verifier knows a new key before it signs, and an old one
/// until its tokens have expired).
#[derive(Debug)]
pub struct KeySet {
    keys: Vec<Arc<SigningKey>>,
    /// The JWKS document, rendered once.
    jwks: bytes::Bytes,
}

/// A key file that could not be used: which one (its index in
/// `signing_keys`) and why.
#[derive(Debug)]
pub struct KeyFileError {
    pub index: usize,
    pub path: PathBuf,
    pub why: String,
}

impl KeySet {
    /// Builds the set; `None` if `keys` is empty.
    pub fn new(keys: Vec<SigningKey>) -> Option<KeySet> {
        if keys.is_empty() {
            return None;
        }
        let doc = jwks::document(keys.iter().map(|k| (&k.public, k.kid.as_str())));
        Some(KeySet {
            keys: keys.into_iter().map(Arc::new).collect(),
            jwks: bytes::Bytes::from(doc),
        })
    }

    /// Reads every file (paths as given). The same key twice is refused: one
    /// `kid` must name one key. Returns the set and a warning per file others
    /// may read.
    pub fn load(paths: &[PathBuf]) -> Result<(KeySet, Vec<String>), KeyFileError> {
        let mut keys: Vec<SigningKey> = Vec::with_capacity(paths.len());
        let mut warnings = Vec::new();
        for (index, path) in paths.iter().enumerate() {
            let fail = |why: String| KeyFileError {
                index,
                path: path.clone(),
                why,
            };
            let pem = std::fs::read(path).map_err(|e| fail(format!("cannot be read: {e}")))?;
            let key = SigningKey::from_pem(&pem).map_err(|e| fail(e.to_string()))?;
            if keys.iter().any(|k| k.kid == key.kid) {
                return Err(fail(format!(
                    "is the same key as an earlier entry (kid {})",
                    key.kid
                )));
            }
            if let Ok(meta) = std::fs::metadata(path)
                && meta.permissions().mode() & 0o077 != 0
            {
                warnings.push(format!(
                    "{} can be read by other users than its owner: chmod 600 it",
                    path.display()
                ));
            }
            keys.push(key);
        }
        let set = KeySet::new(keys).ok_or(KeyFileError {
            index: 0,
            path: PathBuf::new(),
            why: "name at least one key file".into(),
        })?;
        Ok((set, warnings))
    }

    /// The key that signs assertions: the first.
    pub fn signer(&self) -> &Arc<SigningKey> {
        &self.keys[0]
    }

    /// The key that signs ID tokens: the first RS256 key, since OpenID Connect
    /// clients expect RS256 unless registered otherwise (OIDC Discovery section
    /// 3, Dynamic Client Registration section 2); without one, the first key.
    pub fn id_token_signer(&self) -> &Arc<SigningKey> {
        self.keys
            .iter()
            .find(|k| k.alg == Alg::Rs256)
            .unwrap_or(&self.keys[0])
    }

    pub fn keys(&self) -> &[Arc<SigningKey>] {
        &self.keys
    }

    /// `/.well-known/jwks.json`: every key's public JWK.
    pub fn jwks_json(&self) -> bytes::Bytes {
        self.jwks.clone()
    }
}

/// A new private key as PKCS#8 PEM. RSA keys are 3072 bits (128-bit security,
/// NIST SP 800-57 part 1 table 2); ring cannot make RSA keys, the `rsa` crate does.
pub fn generate_pem(alg: Alg) -> io::Result<String> {
    let rng = SystemRandom::new();
    let failed = |_| io::Error::other("key generation failed");
    let der: Vec<u8> = match alg {
        Alg::Es256 => {
            EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                .map_err(failed)?
                .as_ref()
                .to_vec()
        }
        Alg::EdDsa => Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(failed)?
            .as_ref()
            .to_vec(),
        Alg::Rs256 => {
            use rsa::Generate;
            use rsa::pkcs8::EncodePrivateKey;
            let key = rsa::PrivateKey::try_generate()
                .map_err(|_| io::Error::other("RSA key generation failed"))?;
            key.to_pkcs8_der()
                .map_err(|_| io::Error::other("RSA key encoding failed"))?
                .as_bytes()
                .to_vec()
        }
    };
    let body = STANDARD.encode(&der);
    let mut pem = String::with_capacity(body.len() + body.len() / 64 + 64);
    pem.push_str("-----BEGIN PRIVATE KEY-----\n");
    for line in body.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    Ok(pem)
}

/// `whosthat keygen`: writes a new key to `path` with mode 0600 and returns
/// its `kid`. An existing file is never replaced. The key is written to a
/// temporary file first and linked into place, so `path` appears whole or not
/// at all.
pub fn write_new_key(path: &Path, alg: Alg) -> io::Result<String> {
    if path.symlink_metadata().is_ok() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists; keygen never overwrites a key", path.display()),
        ));
    }
    let pem = generate_pem(alg)?;
    let kid = SigningKey::from_pem(pem.as_bytes())
        .map_err(|e| io::Error::other(format!("the new key {e}")))?
        .kid;
    // The mode exactly, whatever the umask; an existing file is never replaced.
    crate::fsutil::write_new(path, pem.as_bytes(), 0o600).map_err(|e| {
        if e.kind() == io::ErrorKind::AlreadyExists {
            io::Error::new(
                e.kind(),
                format!("{} exists; keygen never overwrites a key", path.display()),
            )
        } else {
            io::Error::new(e.kind(), format!("cannot write {}: {e}", path.display()))
        }
    })?;
    Ok(kid)
}

/// A PEM key per algorithm for tests (RSA generated once per process: it takes
/// a moment).
#[doc(hidden)]
pub fn test_pem(alg: Alg) -> Vec<u8> {
    static RSA: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    match alg {
        Alg::Rs256 => RSA
            .get_or_init(|| generate_pem(Alg::Rs256).expect("RSA key"))
            .as_bytes()
            .to_vec(),
        other => generate_pem(other).expect("key").into_bytes(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_load_with_their_algorithm_and_thumbprint() {
        for alg in [Alg::Es256, Alg::EdDsa, Alg::Rs256] {
            let pem = test_pem(alg);
            let key = SigningKey::from_pem(&pem).unwrap();
            assert_eq!(key.alg(), alg);
            assert_eq!(key.kid(), key.public_jwk().thumbprint());
            assert_eq!(key.kid().len(), 43);
            assert!(!format!("{key:?}").contains("PRIVATE"));
        }
    }

    #[test]
    fn unusable_pem_is_refused_with_a_reason() {
        assert_eq!(
            SigningKey::from_pem(b"not a key").unwrap_err(),
            KeyError::NoKey
        );
        let enc =
            b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n";
        assert_eq!(SigningKey::from_pem(enc).unwrap_err(), KeyError::Encrypted);
        let sec1 = b"-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n";
        assert_eq!(SigningKey::from_pem(sec1).unwrap_err(), KeyError::Sec1);
        let junk = b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        assert_eq!(
            SigningKey::from_pem(junk).unwrap_err(),
            KeyError::Unsupported
        );
    }

    #[test]
    fn the_first_key_signs_and_id_tokens_prefer_rs256() {
        let es = SigningKey::from_pem(&test_pem(Alg::Es256)).unwrap();
        let rs = SigningKey::from_pem(&test_pem(Alg::Rs256)).unwrap();
        let (es_kid, rs_kid) = (es.kid().to_string(), rs.kid().to_string());
        let set = KeySet::new(vec![es, rs]).unwrap();
        assert_eq!(set.signer().kid(), es_kid);
        assert_eq!(set.id_token_signer().kid(), rs_kid);
        let doc: serde_json::Value = serde_json::from_slice(&set.jwks_json()).unwrap();
        let kids: Vec<&str> = doc["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap())
            .collect();
        assert_eq!(kids, [es_kid.as_str(), rs_kid.as_str()]);
        assert!(!doc.to_string().contains("\"d\""), "no private member");
        assert!(KeySet::new(vec![]).is_none());
    }

    #[test]
    fn keygen_writes_0600_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.pem");
        let kid = write_new_key(&path, Alg::Es256).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let key = SigningKey::from_pem(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(key.kid(), kid);
        let before = std::fs::read(&path).unwrap();
        let e = write_new_key(&path, Alg::EdDsa).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&path).unwrap(), before);
        // No temporary file left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn the_same_key_twice_is_refused_and_loose_modes_warned_about() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.pem");
        write_new_key(&a, Alg::Es256).unwrap();
        let b = dir.path().join("b.pem");
        std::fs::copy(&a, &b).unwrap();
        let e = KeySet::load(&[a.clone(), b.clone()]).unwrap_err();
        assert_eq!(e.index, 1);
        assert!(e.why.contains("same key"), "{}", e.why);
        std::fs::set_permissions(&a, std::fs::Permissions::from_mode(0o644)).unwrap();
        let (set, warnings) = KeySet::load(std::slice::from_ref(&a)).unwrap();
        assert_eq!(set.keys().len(), 1);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
    }
}
