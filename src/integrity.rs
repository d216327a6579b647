//! Tamper evidence for the spool and for the copy in CloudWatch.
//!
//! - Every stored event carries `hash = SHA-256(prev_hash ‖ canonical(event, seq))`, chained
//!   from 32 zero bytes at sequence 1 (see [`chain_hash`] for the exact encoding).
//! - Every `integrity.checkpoint_every` events or `checkpoint_interval` (idle or not) and at
//!   shutdown, the writer stores a checkpoint `{sequence, chain head, time}`, signed with an
//!   Ed25519 key when `integrity.signing_key_file` is set. A checkpoint is itself a row of
//!   the spool (organization key 0), so it is chained, forwarded to CloudWatch in order as
//!   a `"type":"checkpoint"` message, and kept by retention as the anchor of a cut.
//!
//! The chain alone shows accidental damage; the signatures show a rewrite, and the copy in
//! CloudWatch (see `verify --cloudwatch`) anchors the spool outside the machine.

use crate::timestamp::{format_timestamp_ms, parse_timestamp_ms};
use base64::Engine;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePublicKey};
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use sha2::{Digest, Sha256};
use std::path::Path;

/// The chain's starting value: the "previous hash" of sequence number 1.
pub const GENESIS: [u8; 32] = [0; 32];

/// The organization key of checkpoint rows in the spool (real organizations start at 1).
pub const CHECKPOINT_ORG: i64 = 0;

/// What the chain hashes of one stored event: every column a reader uses.
#[derive(Debug, Clone, Copy)]
pub struct Canonical<'a> {
    pub seq: i64,
    pub ts_ms: i64,
    /// The 16 bytes of the event's UUID.
    pub id: &'a [u8],
    pub organization_id: &'a str,
    pub actor: &'a str,
    pub action: &'a str,
    pub body: &'a str,
}

/// `link(prev, seq, content_digest(e))`: any change of any column, or of the position,
/// changes it.
pub fn chain_hash(prev: &[u8; 32], e: &Canonical<'_>) -> [u8; 32] {
    link(prev, e.seq, &content_digest(e))
}

/// `SHA-256("audit-relay/event/v2" ‖ prev ‖ seq ‖ digest)`, `seq` as 8-byte big-endian:
/// the chain step. The writer does only this one-block hash; the content digest is
/// computed where the event is decoded, off the writer's thread.
pub fn link(prev: &[u8; 32], seq: i64, digest: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"audit-relay/event/v2");
    h.update(prev);
    h.update(seq.to_be_bytes());
    h.update(digest);
    h.finalize().into()
}

/// `SHA-256("audit-relay/content/v1" ‖ ts_ms ‖ id ‖ organizationId ‖ actor ‖ action ‖
/// body)`: what an event says, wherever it sits. `ts_ms` is 8-byte big-endian; the id and
/// each string are preceded by their length as 4-byte big-endian. (`seq` is not part of
/// it.)
pub fn content_digest(e: &Canonical<'_>) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"audit-relay/content/v1");
    h.update(e.ts_ms.to_be_bytes());
    for part in [
        e.id,
        e.organization_id.as_bytes(),
        e.actor.as_bytes(),
        e.action.as_bytes(),
        e.body.as_bytes(),
    ] {
        h.update((part.len() as u32).to_be_bytes());
        h.update(part);
    }
    h.finalize().into()
}

/// Lower-case hex.
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses 64 hex digits.
pub fn hash_from_hex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// The chain head at a sequence number, at a time, perhaps signed: an integrity
/// checkpoint, stored as a row of the chain and forwarded as a `"type":"checkpoint"`
/// message. (Not to be confused with [`crate::source::checkpoint::SourceOffset`], where
/// reading of a file resumes.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainCheckpoint {
    /// The last sequence number covered.
    pub sequence: i64,
    /// The chain hash of that event.
    pub chain_head: [u8; 32],
    /// When it was made (Unix milliseconds).
    pub time_ms: i64,
    /// The signing key's id and the signature; `None` without `integrity.signing_key_file`.
    pub signed: Option<(String, [u8; 64])>,
    /// With the installation store: the other relays' chains as this relay's shipper last
    /// saw them there (a witness: deleting a relay's whole chain together with its
    /// registry row still leaves these). Covered by the row's hash, hence by the next
    /// signed checkpoint; not by this checkpoint's own signature.
    pub peers: Vec<Peer>,
}

/// Another relay's chain head in the installation store, as witnessed by a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Peer {
    pub relay_id: String,
    /// Its `shipped_seq` then.
    pub seq: i64,
    /// Hex of its chain hash at `seq`.
    pub chain_head: String,
}

/// The JSON form: what the spool stores and CloudWatch receives.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CheckpointJson {
    #[serde(rename = "type")]
    kind: String,
    sequence: i64,
    chain_head: String,
    time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    signature: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    peers: Vec<Peer>,
}

impl ChainCheckpoint {
    /// The bytes the signature covers.
    fn signed_bytes(sequence: i64, head: &[u8; 32], time_ms: i64) -> Vec<u8> {
        let mut m = b"audit-relay/checkpoint/v1".to_vec();
        m.extend_from_slice(&sequence.to_be_bytes());
        m.extend_from_slice(head);
        m.extend_from_slice(&time_ms.to_be_bytes());
        m
    }

    pub fn to_json(&self) -> String {
        let b64 = base64::engine::general_purpose::STANDARD;
        serde_json::to_string(&CheckpointJson {
            kind: "checkpoint".into(),
            sequence: self.sequence,
            chain_head: to_hex(&self.chain_head),
            time: format_timestamp_ms(self.time_ms),
            key_id: self.signed.as_ref().map(|(k, _)| k.clone()),
            signature: self.signed.as_ref().map(|(_, s)| b64.encode(s)),
            peers: self.peers.clone(),
        })
        .expect("checkpoint serializes")
    }

    /// Parses a checkpoint message, or says what is wrong with it. Static fields the
    /// forwarder added (CloudWatch copies) are ignored when `lenient`.
    pub fn from_json(s: &str, lenient: bool) -> Result<ChainCheckpoint, String> {
        let j: CheckpointJson = if lenient {
            let mut v: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(s).map_err(|e| format!("not a JSON object: {e}"))?;
            v.retain(|k, _| {
                matches!(
                    k.as_str(),
                    "type" | "sequence" | "chainHead" | "time" | "keyId" | "signature" | "peers"
                )
            });
            serde_json::from_value(serde_json::Value::Object(v))
        } else {
            serde_json::from_str(s)
        }
        .map_err(|e| format!("not a checkpoint: {e}"))?;
        if j.kind != "checkpoint" {
            return Err(format!("type is {:?}, not \"checkpoint\"", j.kind));
        }
        let chain_head =
            hash_from_hex(&j.chain_head).ok_or("chainHead is not 64 hex digits".to_string())?;
        let time_ms =
            parse_timestamp_ms(&j.time).ok_or(format!("time {:?} is not RFC 3339", j.time))?;
        let signed = match (j.key_id, j.signature) {
            (Some(k), Some(sig)) => {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(sig)
                    .map_err(|e| format!("signature is not base64: {e}"))?;
                let sig: [u8; 64] = bytes
                    .try_into()
                    .map_err(|_| "signature is not 64 bytes".to_string())?;
                Some((k, sig))
            }
            (None, None) => None,
            _ => return Err("keyId and signature must come together".into()),
        };
        Ok(ChainCheckpoint {
            sequence: j.sequence,
            chain_head,
            time_ms,
            signed,
            peers: j.peers,
        })
    }
}

/// Why a key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("integrity.signing_key_file {path}: cannot read it: {err}")]
    Read { path: String, err: std::io::Error },
    #[error("integrity.signing_key_file {path}: not an Ed25519 private key in PKCS#8 PEM ({err}). Create one with `openssl genpkey -algorithm ed25519 -out {path}` and `chmod 600 {path}`")]
    Parse { path: String, err: String },
    #[error("public key {path}: not an Ed25519 public key in PEM ({err}); `audit-relay integrity public-key` prints it")]
    Public { path: String, err: String },
    #[error("public key {path}: cannot read it: {err}")]
    PublicRead { path: String, err: std::io::Error },
}

/// The private key that signs checkpoints.
pub struct Signer {
    key: SigningKey,
    key_id: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key itself.
        write!(f, "Signer({})", self.key_id)
    }
}

impl Signer {
    /// Reads a PKCS#8 PEM Ed25519 private key (as `openssl genpkey -algorithm ed25519` writes).
    pub fn load(path: &Path) -> Result<Signer, KeyError> {
        let shown = path.display().to_string();
        let pem = std::fs::read_to_string(path).map_err(|err| KeyError::Read {
            path: shown.clone(),
            err,
        })?;
        let key = SigningKey::from_pkcs8_pem(&pem).map_err(|e| KeyError::Parse {
            path: shown,
            err: e.to_string(),
        })?;
        Ok(Signer::from_key(key))
    }

    pub fn from_key(key: SigningKey) -> Signer {
        let key_id = key_id(&key.verifying_key());
        Signer { key, key_id }
    }

    /// The id of the key (as checkpoints name it).
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey {
            key: self.key.verifying_key(),
            key_id: self.key_id.clone(),
        }
    }

    /// A signed checkpoint.
    pub fn sign(&self, sequence: i64, chain_head: [u8; 32], time_ms: i64) -> ChainCheckpoint {
        let sig = self.key.sign(&ChainCheckpoint::signed_bytes(
            sequence,
            &chain_head,
            time_ms,
        ));
        ChainCheckpoint {
            sequence,
            chain_head,
            time_ms,
            signed: Some((self.key_id.clone(), sig.to_bytes())),
            peers: Vec::new(),
        }
    }
}

/// The first 8 bytes of SHA-256 of the raw public key, in hex: names the key in checkpoints.
fn key_id(k: &VerifyingKey) -> String {
    to_hex(&Sha256::digest(k.as_bytes())[..8])
}

/// The public key that verifies checkpoints.
#[derive(Debug, Clone)]
pub struct PublicKey {
    key: VerifyingKey,
    pub key_id: String,
}

impl PublicKey {
    /// Reads a SubjectPublicKeyInfo PEM (`integrity public-key`, `openssl pkey -pubout`).
    pub fn load(path: &Path) -> Result<PublicKey, KeyError> {
        let shown = path.display().to_string();
        let pem = std::fs::read_to_string(path).map_err(|err| KeyError::PublicRead {
            path: shown.clone(),
            err,
        })?;
        let key = VerifyingKey::from_public_key_pem(&pem).map_err(|e| KeyError::Public {
            path: shown,
            err: e.to_string(),
        })?;
        Ok(PublicKey {
            key_id: key_id(&key),
            key,
        })
    }

    pub fn to_pem(&self) -> String {
        self.key
            .to_public_key_pem(LineEnding::LF)
            .expect("an Ed25519 public key encodes")
    }

    /// Whether `c` carries a valid signature by this key.
    pub fn verify(&self, c: &ChainCheckpoint) -> Result<(), String> {
        let Some((kid, sig)) = &c.signed else {
            return Err("not signed".into());
        };
        if *kid != self.key_id {
            return Err(format!(
                "signed by key {kid}, not by the configured key {}",
                self.key_id
            ));
        }
        self.key
            .verify(
                &ChainCheckpoint::signed_bytes(c.sequence, &c.chain_head, c.time_ms),
                &Signature::from_bytes(sig),
            )
            .map_err(|_| "the signature does not match".to_string())
    }
}

/// The public keys checkpoints may be signed with: the current one, and the ones before a
/// rotation (each checkpoint names its key by id).
#[derive(Debug, Clone)]
pub struct KeyRing(Vec<PublicKey>);

impl KeyRing {
    pub fn new(keys: Vec<PublicKey>) -> KeyRing {
        KeyRing(keys)
    }

    /// Whether `c` carries a valid signature by one of the keys.
    pub fn verify(&self, c: &ChainCheckpoint) -> Result<(), String> {
        let Some((kid, _)) = &c.signed else {
            return Err("not signed".into());
        };
        match self.0.iter().find(|k| k.key_id == *kid) {
            Some(k) => k.verify(c),
            None => Err(format!(
                "signed by key {kid}, which is none of the given keys ({})",
                self.0
                    .iter()
                    .map(|k| k.key_id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }
}

impl From<PublicKey> for KeyRing {
    fn from(k: PublicKey) -> KeyRing {
        KeyRing(vec![k])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> Signer {
        Signer::from_key(SigningKey::from_bytes(&[7u8; 32]))
    }

    #[test]
    fn every_column_and_the_position_change_the_hash() {
        let e = Canonical {
            seq: 5,
            ts_ms: 1_700_000_000_000,
            id: &[1; 16],
            organization_id: "org",
            actor: "a",
            action: "x",
            body: "{}",
        };
        let h = chain_hash(&GENESIS, &e);
        let variants = [
            Canonical { seq: 6, ..e },
            Canonical { ts_ms: 1, ..e },
            Canonical { id: &[2; 16], ..e },
            Canonical {
                organization_id: "orh",
                ..e
            },
            Canonical { actor: "b", ..e },
            Canonical { action: "y", ..e },
            Canonical { body: "{ }", ..e },
            // Moving a byte between adjacent fields must not collide.
            Canonical {
                actor: "ax",
                action: "",
                ..e
            },
        ];
        for v in variants {
            assert_ne!(chain_hash(&GENESIS, &v), h, "{v:?}");
        }
        assert_ne!(chain_hash(&[1; 32], &e), h);
        assert_eq!(chain_hash(&GENESIS, &e), h);
    }

    #[test]
    fn checkpoints_round_trip_and_verify() {
        let s = signer();
        let c = s.sign(42, [9; 32], 1_700_000_000_123);
        let back = ChainCheckpoint::from_json(&c.to_json(), false).unwrap();
        assert_eq!(back, c);
        let pk = s.public_key();
        pk.verify(&back).unwrap();
        let pem = pk.to_pem();
        assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----"), "{pem}");

        let mut forged = back.clone();
        forged.sequence = 43;
        assert_eq!(
            pk.verify(&forged).unwrap_err(),
            "the signature does not match"
        );
        let other_signer = Signer::from_key(SigningKey::from_bytes(&[8u8; 32]));
        let other = other_signer.sign(42, [9; 32], 0);
        assert!(pk.verify(&other).unwrap_err().contains("signed by key"));
        // A ring holding both keys (a rotation) verifies both; one key alone does not.
        let ring = KeyRing::new(vec![pk.clone(), other_signer.public_key()]);
        ring.verify(&back).unwrap();
        ring.verify(&other).unwrap();
        let one: KeyRing = pk.clone().into();
        assert!(one
            .verify(&other)
            .unwrap_err()
            .contains("none of the given keys"));
        let unsigned = ChainCheckpoint {
            signed: None,
            ..c.clone()
        };
        assert_eq!(
            ChainCheckpoint::from_json(&unsigned.to_json(), false).unwrap(),
            unsigned
        );
        assert!(pk.verify(&unsigned).is_err());
    }

    #[test]
    fn cloudwatch_copies_with_static_fields_parse_leniently() {
        let c = signer().sign(1, [0; 32], 0);
        let with_static = c.to_json().replace('}', r#","cluster":"eu-1"}"#);
        assert!(ChainCheckpoint::from_json(&with_static, false).is_err());
        assert_eq!(ChainCheckpoint::from_json(&with_static, true).unwrap(), c);
        assert!(ChainCheckpoint::from_json(r#"{"type":"event"}"#, true).is_err());
    }

    #[test]
    fn hex_round_trips() {
        let h = [0xab; 32];
        assert_eq!(hash_from_hex(&to_hex(&h)), Some(h));
        assert_eq!(hash_from_hex("zz"), None);
    }
}
