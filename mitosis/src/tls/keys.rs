//! The key material of one direction of a session, and the ciphers built
//! from it with the provider's code.
//!
//! Everything cryptographic here is rustls's provider's: HKDF for a TLS 1.3
//! KeyUpdate (RFC 8446, section 7.2) and the AEAD of the record layer. This
//! module only arranges the bytes: the labels of HKDF-Expand-Label, and
//! which key and IV go where.

use std::sync::OnceLock;

use rustls::crypto::cipher::{
    AeadKey, InboundOpaqueMessage, InboundPlainMessage, Iv, MessageDecrypter, MessageEncrypter,
    OutboundOpaqueMessage, OutboundPlainMessage,
};
use rustls::crypto::tls13::{Hkdf, HkdfExpander, OkmBlock, OutputLengthError};
use rustls::{ConnectionTrafficSecrets, SupportedCipherSuite};
use zeroize::Zeroizing;

/// The length of every AEAD nonce in TLS.
pub(super) const IV_LEN: usize = 12;

/// One direction's key material: the AEAD key and IV, and in TLS 1.3 the
/// traffic secret they were derived from, which the next KeyUpdate needs.
/// Wiped when dropped.
pub(super) struct Keys {
    pub(super) key: Zeroizing<Vec<u8>>,
    pub(super) iv: Zeroizing<[u8; IV_LEN]>,
    pub(super) secret: Option<Zeroizing<Vec<u8>>>,
}

impl Keys {
    /// The key and IV rustls extracted, and the TLS 1.3 traffic secret its
    /// key log saw.
    pub(super) fn extracted(
        secrets: ConnectionTrafficSecrets,
        secret: Option<Zeroizing<Vec<u8>>>,
    ) -> Result<Keys, String> {
        let (key, iv) = match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv }
            | ConnectionTrafficSecrets::Aes256Gcm { key, iv }
            | ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => (key, iv),
            _ => return Err("rustls extracted keys of a kind this build does not know".into()),
        };
        let mut nonce = Zeroizing::new([0; IV_LEN]);
        nonce.copy_from_slice(iv.as_ref());
        Ok(Keys {
            key: Zeroizing::new(key.as_ref().to_vec()),
            iv: nonce,
            secret,
        })
    }

    /// The keys of the next generation of a TLS 1.3 traffic secret, after
    /// a KeyUpdate (RFC 8446, section 7.2):
    /// `secret' = HKDF-Expand-Label(secret, "traffic upd", "", Hash.length)`.
    pub(super) fn next(&self, suite: Suite) -> Result<Keys, String> {
        let Suite::Tls13(tls13) = suite else {
            return Err("TLS 1.2 has no KeyUpdate".into());
        };
        let secret = self
            .secret
            .as_ref()
            .ok_or("the traffic secret is not known, so the keys cannot be updated")?;
        let expander = tls13.hkdf_provider.expander_for_okm(&OkmBlock::new(secret));
        let next = expand_label_block(expander.as_ref(), b"traffic upd");
        Keys::of_secret(tls13.hkdf_provider, suite.key_len(), next.as_ref())
    }

    /// The key and IV of a TLS 1.3 traffic secret (RFC 8446, section 7.3).
    fn of_secret(hkdf: &dyn Hkdf, key_len: usize, secret: &[u8]) -> Result<Keys, String> {
        let expander = hkdf.expander_for_okm(&OkmBlock::new(secret));
        let mut key = Zeroizing::new(vec![0; key_len]);
        let mut iv = Zeroizing::new([0; IV_LEN]);
        expand_label(expander.as_ref(), b"key", &mut key)
            .and_then(|()| expand_label(expander.as_ref(), b"iv", &mut iv[..]))
            .map_err(|_| "HKDF refused the output length of a key")?;
        Ok(Keys {
            key,
            iv,
            secret: Some(Zeroizing::new(secret.to_vec())),
        })
    }

    /// A cipher that seals this direction's records.
    pub(super) fn encrypter(&self, suite: Suite) -> Result<Box<dyn MessageEncrypter>, String> {
        let key = aead_key(&self.key, suite.key_len())?;
        Ok(match suite {
            Suite::Tls13(tls13) => tls13.aead_alg.encrypter(key, Iv::from(*self.iv)),
            Suite::Tls12(tls12) => {
                // The fixed part of the nonce, then (for GCM) the explicit
                // part the first record starts from, as rustls split them.
                let fixed = tls12.aead_alg.key_block_shape().fixed_iv_len;
                tls12
                    .aead_alg
                    .encrypter(key, &self.iv[..fixed], &self.iv[fixed..])
            }
        })
    }

    /// A cipher that opens this direction's records.
    pub(super) fn decrypter(&self, suite: Suite) -> Result<Box<dyn MessageDecrypter>, String> {
        let key = aead_key(&self.key, suite.key_len())?;
        Ok(match suite {
            Suite::Tls13(tls13) => tls13.aead_alg.decrypter(key, Iv::from(*self.iv)),
            Suite::Tls12(tls12) => {
                let fixed = tls12.aead_alg.key_block_shape().fixed_iv_len;
                tls12.aead_alg.decrypter(key, &self.iv[..fixed])
            }
        })
    }
}

/// The negotiated cipher suite, as the record layer needs it.
#[derive(Clone, Copy)]
pub(super) enum Suite {
    Tls12(&'static rustls::Tls12CipherSuite),
    Tls13(&'static rustls::Tls13CipherSuite),
}

impl Suite {
    pub(super) fn of(suite: SupportedCipherSuite) -> Suite {
        match suite {
            SupportedCipherSuite::Tls12(tls12) => Suite::Tls12(tls12),
            SupportedCipherSuite::Tls13(tls13) => Suite::Tls13(tls13),
        }
    }

    /// The suite named `id` in the process-default crypto provider, which
    /// must have it for `version`.
    pub(super) fn named(id: u16, version: rustls::ProtocolVersion) -> Result<Suite, String> {
        let provider = rustls::crypto::CryptoProvider::get_default().ok_or(
            "no process-default rustls CryptoProvider is installed, and the TLS session needs \
             one to resume; install one before mitosis::init, e.g. \
             rustls::crypto::ring::default_provider().install_default()",
        )?;
        let id = rustls::CipherSuite::from(id);
        let suite = provider
            .cipher_suites
            .iter()
            .find(|suite| suite.suite() == id && suite.version().version == version)
            .ok_or_else(|| {
                format!(
                    "the process-default rustls CryptoProvider has no {id:?} for {version:?}, \
                     the session's cipher suite"
                )
            })?;
        Ok(Suite::of(*suite))
    }

    pub(super) fn id(self) -> rustls::CipherSuite {
        match self {
            Suite::Tls12(tls12) => tls12.common.suite,
            Suite::Tls13(tls13) => tls13.common.suite,
        }
    }

    pub(super) fn version(self) -> rustls::ProtocolVersion {
        match self {
            Suite::Tls12(_) => rustls::ProtocolVersion::TLSv1_2,
            Suite::Tls13(_) => rustls::ProtocolVersion::TLSv1_3,
        }
    }

    pub(super) fn key_len(self) -> usize {
        match self {
            Suite::Tls12(tls12) => tls12.aead_alg.key_block_shape().enc_key_len,
            Suite::Tls13(tls13) => tls13.aead_alg.key_len(),
        }
    }

    /// How many records one key may seal before it must be replaced.
    pub(super) fn confidentiality_limit(self) -> u64 {
        match self {
            Suite::Tls12(tls12) => tls12.common.confidentiality_limit,
            Suite::Tls13(tls13) => tls13.common.confidentiality_limit,
        }
    }

    /// The length of a traffic secret: the suite's hash length.
    pub(super) fn secret_len(self) -> usize {
        match self {
            Suite::Tls12(_) => 0,
            Suite::Tls13(tls13) => tls13.common.hash_provider.output_len(),
        }
    }
}

/// The info of HKDF-Expand-Label (RFC 8446, section 7.1) with an empty
/// context, for `len` bytes of output: its pieces in order.
fn label_info<'a>(len: &'a [u8; 2], label_len: &'a [u8; 1], label: &'a [u8]) -> [&'a [u8]; 5] {
    [len, label_len, b"tls13 ", label, &[0]]
}

fn expand_label(
    expander: &dyn HkdfExpander,
    label: &[u8],
    out: &mut [u8],
) -> Result<(), OutputLengthError> {
    let len = (out.len() as u16).to_be_bytes();
    let label_len = [(b"tls13 ".len() + label.len()) as u8];
    expander.expand_slice(&label_info(&len, &label_len, label), out)
}

fn expand_label_block(expander: &dyn HkdfExpander, label: &[u8]) -> OkmBlock {
    let len = (expander.hash_len() as u16).to_be_bytes();
    let label_len = [(b"tls13 ".len() + label.len()) as u8];
    expander.expand_block(&label_info(&len, &label_len, label))
}

/// An [`AeadKey`] of `len` bytes holding `bytes`.
///
/// rustls builds keys of any length only inside itself: its public
/// `AeadKey::from` takes 32 bytes and declares all of them the key, which
/// suits AES-256-GCM and ChaCha20-Poly1305, but the provider refuses (and
/// panics on) a 32-byte key for AES-128-GCM. rustls's QUIC key schedule is
/// public and makes a key of the suite's length from HKDF output, so a
/// 16-byte key is made by running that schedule with an HKDF that returns
/// the key itself: no cryptography, only the length rustls sets.
fn aead_key(bytes: &[u8], len: usize) -> Result<AeadKey, String> {
    if bytes.len() != len {
        return Err(format!(
            "a key of {} bytes for a cipher that takes {len}",
            bytes.len()
        ));
    }
    match len {
        32 => {
            let mut key = Zeroizing::new([0; 32]);
            key.copy_from_slice(bytes);
            Ok(AeadKey::from(*key))
        }
        16 => short_key::make(bytes).ok_or_else(|| "rustls's QUIC key schedule made no key".into()),
        other => Err(format!("no cipher of TLS takes a key of {other} bytes")),
    }
}

/// The 16-byte key of [`aead_key`], through rustls's QUIC key schedule.
mod short_key {
    use std::cell::RefCell;

    use rustls::crypto::cipher::{AeadKey, Iv};
    use rustls::quic::{Algorithm, HeaderProtectionKey, PacketKey, Tag};

    use super::*;

    thread_local! {
        /// The key the schedule last handed to [`Capture`].
        static CAPTURED: RefCell<Option<AeadKey>> = const { RefCell::new(None) };
    }

    pub(super) fn make(bytes: &[u8]) -> Option<AeadKey> {
        // The schedule expands `bytes` (given as the connection id) into a
        // "secret", and that into a key: both through `Passthrough`, so the key is
        // `bytes`, cut to the 16 bytes `Capture` asks for.
        CAPTURED.with(|captured| captured.borrow_mut().take());
        rustls::quic::Keys::initial(
            rustls::quic::Version::V1,
            suite(),
            &Capture,
            bytes,
            rustls::Side::Client,
        );
        CAPTURED.with(|captured| captured.borrow_mut().take())
    }

    /// A suite whose HKDF is [`Passthrough`]; nothing else of it is used.
    fn suite() -> &'static rustls::Tls13CipherSuite {
        static SUITE: OnceLock<rustls::Tls13CipherSuite> = OnceLock::new();
        SUITE.get_or_init(|| rustls::Tls13CipherSuite {
            common: rustls::CipherSuiteCommon {
                suite: rustls::CipherSuite::TLS13_AES_128_GCM_SHA256,
                hash_provider: &Unused,
                confidentiality_limit: 0,
            },
            hkdf_provider: &Passthrough,
            aead_alg: &Unused,
            quic: None,
        })
    }

    /// "HKDF" that outputs its input keying material.
    struct Passthrough;

    struct PassthroughExpander(Zeroizing<Vec<u8>>);

    impl Hkdf for Passthrough {
        fn extract_from_zero_ikm(&self, _: Option<&[u8]>) -> Box<dyn HkdfExpander> {
            Box::new(PassthroughExpander(Zeroizing::new(Vec::new())))
        }
        fn extract_from_secret(&self, _: Option<&[u8]>, secret: &[u8]) -> Box<dyn HkdfExpander> {
            Box::new(PassthroughExpander(Zeroizing::new(secret.to_vec())))
        }
        fn expander_for_okm(&self, okm: &OkmBlock) -> Box<dyn HkdfExpander> {
            Box::new(PassthroughExpander(Zeroizing::new(okm.as_ref().to_vec())))
        }
        fn hmac_sign(&self, _: &OkmBlock, _: &[u8]) -> rustls::crypto::hmac::Tag {
            rustls::crypto::hmac::Tag::new(&[])
        }
    }

    impl HkdfExpander for PassthroughExpander {
        fn expand_slice(&self, _: &[&[u8]], output: &mut [u8]) -> Result<(), OutputLengthError> {
            let n = output.len().min(self.0.len());
            output[..n].copy_from_slice(&self.0[..n]);
            Ok(())
        }
        fn expand_block(&self, _: &[&[u8]]) -> OkmBlock {
            OkmBlock::new(&self.0)
        }
        fn hash_len(&self) -> usize {
            self.0.len()
        }
    }

    /// Keeps the packet key the schedule makes.
    struct Capture;

    impl Algorithm for Capture {
        fn packet_key(&self, key: AeadKey, _: Iv) -> Box<dyn PacketKey> {
            CAPTURED.with(|captured| *captured.borrow_mut() = Some(key));
            Box::new(Unused)
        }
        fn header_protection_key(&self, _: AeadKey) -> Box<dyn HeaderProtectionKey> {
            Box::new(Unused)
        }
        fn aead_key_len(&self) -> usize {
            16
        }
    }

    /// The parts of a suite and of QUIC keys that the schedule needs to
    /// exist but never calls.
    struct Unused;

    fn unused() -> rustls::Error {
        rustls::Error::General("not a real cipher".into())
    }

    impl PacketKey for Unused {
        fn encrypt_in_place(&self, _: u64, _: &[u8], _: &mut [u8]) -> Result<Tag, rustls::Error> {
            Err(unused())
        }
        fn decrypt_in_place<'a>(
            &self,
            _: u64,
            _: &[u8],
            _: &'a mut [u8],
        ) -> Result<&'a [u8], rustls::Error> {
            Err(unused())
        }
        fn tag_len(&self) -> usize {
            0
        }
        fn confidentiality_limit(&self) -> u64 {
            0
        }
        fn integrity_limit(&self) -> u64 {
            0
        }
    }

    impl HeaderProtectionKey for Unused {
        fn encrypt_in_place(
            &self,
            _: &[u8],
            _: &mut u8,
            _: &mut [u8],
        ) -> Result<(), rustls::Error> {
            Err(unused())
        }
        fn decrypt_in_place(
            &self,
            _: &[u8],
            _: &mut u8,
            _: &mut [u8],
        ) -> Result<(), rustls::Error> {
            Err(unused())
        }
        fn sample_len(&self) -> usize {
            0
        }
    }

    impl rustls::crypto::hash::Hash for Unused {
        fn start(&self) -> Box<dyn rustls::crypto::hash::Context> {
            Box::new(Unused)
        }
        fn hash(&self, _: &[u8]) -> rustls::crypto::hash::Output {
            rustls::crypto::hash::Output::new(&[])
        }
        fn algorithm(&self) -> rustls::crypto::hash::HashAlgorithm {
            rustls::crypto::hash::HashAlgorithm::SHA256
        }
        fn output_len(&self) -> usize {
            0
        }
    }

    impl rustls::crypto::hash::Context for Unused {
        fn fork_finish(&self) -> rustls::crypto::hash::Output {
            rustls::crypto::hash::Output::new(&[])
        }
        fn fork(&self) -> Box<dyn rustls::crypto::hash::Context> {
            Box::new(Unused)
        }
        fn finish(self: Box<Self>) -> rustls::crypto::hash::Output {
            rustls::crypto::hash::Output::new(&[])
        }
        fn update(&mut self, _: &[u8]) {}
    }

    impl rustls::crypto::cipher::Tls13AeadAlgorithm for Unused {
        fn encrypter(&self, _: AeadKey, _: Iv) -> Box<dyn MessageEncrypter> {
            Box::new(Unused)
        }
        fn decrypter(&self, _: AeadKey, _: Iv) -> Box<dyn MessageDecrypter> {
            Box::new(Unused)
        }
        fn key_len(&self) -> usize {
            16
        }
        fn extract_keys(
            &self,
            _: AeadKey,
            _: Iv,
        ) -> Result<ConnectionTrafficSecrets, rustls::crypto::cipher::UnsupportedOperationError>
        {
            Err(rustls::crypto::cipher::UnsupportedOperationError)
        }
    }

    impl MessageEncrypter for Unused {
        fn encrypt(
            &mut self,
            _: OutboundPlainMessage<'_>,
            _: u64,
        ) -> Result<OutboundOpaqueMessage, rustls::Error> {
            Err(unused())
        }
        fn encrypted_payload_len(&self, len: usize) -> usize {
            len
        }
    }

    impl MessageDecrypter for Unused {
        fn decrypt<'a>(
            &mut self,
            _: InboundOpaqueMessage<'a>,
            _: u64,
        ) -> Result<InboundPlainMessage<'a>, rustls::Error> {
            Err(unused())
        }
    }
}
