//! Password hashes and signed tokens.
//!
//! Passwords are stored as argon2id PHC strings (the algorithm's default cost: 19 MiB, two
//! passes), hashed by the node that takes the request and replicated as the hash only. A token
//! is what `Authenticate` gives for a good password: the user, its generation and an expiry,
//! signed with HMAC-SHA256 under the cluster's token key (made when authentication is turned
//! on, replicated in the meta group), so any node can check any token without asking another.
//! A token stops working when it expires, when its user's generation moves on (a new password,
//! a role taken away) or when the user is removed.
//!
//! Format: `b2.<user, hex>.<generation>.<expiry, ms since the epoch>.<sign-in, ms since the
//! epoch>.<mac, hex>` (the sign-in time bounds renewals, see `Access::renew`); tokens of the
//! first format, `b1` (without it), are read as signed in when they were made.

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

/// Longest password taken, in bytes (argon2 takes more; nobody needs more).
pub const MAX_PASSWORD_BYTES: usize = 1024;
/// Longest token taken, in bytes (a user name of 128 bytes in hex and the rest fit easily).
pub const MAX_TOKEN_BYTES: usize = 1024;

/// The PHC string of `password` with a fresh salt.
pub fn hash_password(password: &str) -> Result<String, String> {
    if password.is_empty() || password.len() > MAX_PASSWORD_BYTES {
        return Err(format!("a password takes 1 to {MAX_PASSWORD_BYTES} bytes"));
    }
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default().hash_password(password.as_bytes(), &salt).map(|h| h.to_string()).map_err(|e| e.to_string())
}

/// Whether `password` matches the stored PHC string.
pub fn verify_password(password: &str, phc: &str) -> bool {
    if password.len() > MAX_PASSWORD_BYTES {
        return false;
    }
    PasswordHash::new(phc).is_ok_and(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
}

/// A fresh random token key (32 bytes from the OS).
pub fn token_key() -> Vec<u8> {
    let mut key = vec![0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key).expect("the OS gives random bytes");
    key
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

fn mac_key(key: &[u8]) -> ring::hmac::Key {
    ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key)
}

/// A token for `user` at `generation`, good until `expires_ms` (wall clock, ms since the epoch),
/// of a sign-in at `since_ms`.
pub fn sign_token(key: &[u8], user: &str, generation: u64, expires_ms: u64, since_ms: u64) -> String {
    let body = format!("b2.{}.{generation}.{expires_ms}.{since_ms}", hex(user.as_bytes()));
    let tag = ring::hmac::sign(&mac_key(key), body.as_bytes());
    format!("{body}.{}", hex(tag.as_ref()))
}

/// What a token says, once its signature checked out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenClaims {
    pub user: String,
    pub generation: u64,
    pub expires_ms: u64,
    /// When its user signed in (renewals keep it).
    pub since_ms: u64,
}

/// Checks a token's form and signature (not its expiry or generation: the caller knows the
/// time and the users).
pub fn open_token(key: &[u8], token: &str) -> Result<TokenClaims, &'static str> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err("the token is too long");
    }
    let (body, tag) = token.rsplit_once('.').ok_or("not a Baton token")?;
    let parts: Vec<&str> = body.split('.').collect();
    let (user, generation, expires, since) = match parts.as_slice() {
        ["b1", user, generation, expires] => (user, generation, expires, None),
        ["b2", user, generation, expires, since] => (user, generation, expires, Some(since)),
        _ => return Err("not a Baton token"),
    };
    let tag = unhex(tag).ok_or("not a Baton token")?;
    ring::hmac::verify(&mac_key(key), body.as_bytes(), &tag).map_err(|_| "the token's signature does not match")?;
    let user = unhex(user).and_then(|u| String::from_utf8(u).ok()).ok_or("not a Baton token")?;
    let generation = generation.parse().map_err(|_| "not a Baton token")?;
    let expires_ms: u64 = expires.parse().map_err(|_| "not a Baton token")?;
    let since_ms = match since {
        Some(s) => s.parse().map_err(|_| "not a Baton token")?,
        None => expires_ms.saturating_sub(super::TOKEN_TTL.as_millis() as u64),
    };
    Ok(TokenClaims { user, generation, expires_ms, since_ms })
}

/// What lets a node run a change to the users and roles that another node took for `user` (at
/// `generation`): a MAC of the user, the proof's expiry and the change itself, under a key
/// derived from the token key for this alone, so that it is neither a token nor good for any
/// other change (review finding: a token in its place could be taken off the peer port and
/// used as a login).
pub fn forward_mac(key: &[u8], user: &str, generation: u64, expires_ms: u64, change: &[u8]) -> Vec<u8> {
    let (key, body) = forward_parts(key, user, generation, expires_ms, change);
    ring::hmac::sign(&key, &body).as_ref().to_vec()
}

/// Whether `mac` is [`forward_mac`] of these (compared in constant time).
pub fn check_forward_mac(key: &[u8], user: &str, generation: u64, expires_ms: u64, change: &[u8], mac: &[u8]) -> bool {
    let (key, body) = forward_parts(key, user, generation, expires_ms, change);
    ring::hmac::verify(&key, &body, mac).is_ok()
}

fn forward_parts(
    key: &[u8],
    user: &str,
    generation: u64,
    expires_ms: u64,
    change: &[u8],
) -> (ring::hmac::Key, Vec<u8>) {
    let derived = ring::hmac::sign(&mac_key(key), b"baton forwarded auth change");
    let mut body = Vec::with_capacity(change.len() + user.len() + 24);
    body.extend_from_slice(&(user.len() as u64).to_be_bytes());
    body.extend_from_slice(user.as_bytes());
    body.extend_from_slice(&generation.to_be_bytes());
    body.extend_from_slice(&expires_ms.to_be_bytes());
    body.extend_from_slice(change);
    (mac_key(derived.as_ref()), body)
}

/// What proves that `session` was opened for `user`: its home gives it with the session
/// (`OpenSessionResponse.session_proof`), and the client shows it to attach the session in
/// another group, whose records do not know the session's owner. A MAC under the token key,
/// the message unambiguous (the id has a fixed width, the user comes after it).
pub fn session_proof(key: &[u8], session: u64, user: &str) -> Vec<u8> {
    let mut body = b"baton session ".to_vec();
    body.extend_from_slice(&session.to_be_bytes());
    body.extend_from_slice(user.as_bytes());
    ring::hmac::sign(&mac_key(key), &body).as_ref().to_vec()
}

/// Whether `proof` is [`session_proof`]`(key, session, user)` (compared in constant time).
pub fn check_session_proof(key: &[u8], session: u64, user: &str, proof: &[u8]) -> bool {
    let mut body = b"baton session ".to_vec();
    body.extend_from_slice(&session.to_be_bytes());
    body.extend_from_slice(user.as_bytes());
    ring::hmac::verify(&mac_key(key), &body, proof).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_verifies_against_its_own_hash_only() {
        let h = hash_password("s3cret").unwrap();
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(verify_password("s3cret", &h));
        assert!(!verify_password("s3cret ", &h));
        assert_ne!(hash_password("s3cret").unwrap(), h, "salted");
        assert!(!verify_password("s3cret", "not a hash"));
        assert!(hash_password("").is_err());
    }

    #[test]
    fn a_token_opens_with_its_key_only_and_unchanged() {
        let key = token_key();
        let t = sign_token(&key, "alice.b", 3, 99, 7);
        let claims = TokenClaims { user: "alice.b".into(), generation: 3, expires_ms: 99, since_ms: 7 };
        assert_eq!(open_token(&key, &t), Ok(claims));
        let forged_since = t.replacen(".99.7.", ".99.8.", 1);
        assert_eq!(open_token(&key, &forged_since), Err("the token's signature does not match"));
        assert_eq!(open_token(&token_key(), &t), Err("the token's signature does not match"));
        let forged = t.replacen(".3.", ".4.", 1);
        assert_eq!(open_token(&key, &forged), Err("the token's signature does not match"));
        for junk in ["", "b1", "b1.zz.1.1.00", "x.y.z", &"a".repeat(2000)] {
            assert!(open_token(&key, junk).is_err(), "{junk:?}");
        }
    }

    #[test]
    fn a_session_proof_holds_for_its_session_user_and_key_only() {
        let key = token_key();
        let proof = session_proof(&key, 7, "alice");
        assert!(check_session_proof(&key, 7, "alice", &proof));
        assert!(!check_session_proof(&key, 8, "alice", &proof));
        assert!(!check_session_proof(&key, 7, "alicf", &proof));
        assert!(!check_session_proof(&token_key(), 7, "alice", &proof));
        assert!(!check_session_proof(&key, 7, "alice", &[]));
    }
}
