//! Kinds of identifiers, and the keys that name one item in a store.
//!
//! A key is built from a [`Kind`] (what the identifier names: `user`, `ip`,
//! `connection`, or any name a configuration picks, such as `tenant`) and the
//! identifier itself. Every policy keyed on the same kind and identifier
//! shares one item; each of its limits is one bucket (a [`Slot`]) of that
//! item.
//!
//! A key's string form is `<kind>#<identifier>`. Kinds are checked names
//! without `#`, `!` or `~`, and the identifier comes last, so no identifier,
//! whatever characters it holds (separators, unicode, nothing), can produce
//! another key's string. An identifier longer than
//! [`MAX_PLAIN_IDENTIFIER_BYTES`] is replaced by its SHA-256 digest and
//! written `<kind>!<hex>`, which keeps keys far below DynamoDB's 2048-byte
//! limit. With a [`KeySecret`], every identifier is replaced by its
//! HMAC-SHA-256 under the secret and written `<kind>~<hex>`, so no raw IP
//! address or user id reaches the store.

use std::borrow::Cow;
use std::fmt;
use std::hash::{Hash, Hasher};

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

/// The longest kind or policy name accepted.
pub const MAX_NAME_BYTES: usize = 64;

/// Checks a kind or policy name: 1 to [`MAX_NAME_BYTES`] ASCII letters,
/// digits and `_`, starting with a letter. Such names need no quoting in
/// keys, environment variable names, metrics or DynamoDB attribute names.
pub fn check_name(name: &str) -> Result<(), NameError> {
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && name.as_bytes()[0].is_ascii_alphabetic()
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(NameError(shorten(name)))
    }
}

/// A name that is not 1 to 64 letters, digits and `_` starting with a letter.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a valid name: use 1 to 64 ASCII letters, digits and '_', starting with a letter"
)]
pub struct NameError(pub String);

/// At most 80 characters of `text` (then `...`), for messages that quote
/// user input: a pasted blob never fills the line that quotes it.
pub(crate) fn shorten(text: &str) -> String {
    const MAX: usize = 80;
    match text.char_indices().nth(MAX) {
        None => text.to_owned(),
        Some((cut, _)) => format!("{}...", &text[..cut]),
    }
}

/// A 64-bit FNV-1a hash, the same in every process and at compile time:
/// the fingerprint of a kind or slot name. Names come from configuration,
/// not from clients, so a fast non-cryptographic hash is enough.
pub const fn fingerprint(name: &str) -> u64 {
    let bytes = name.as_bytes();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    hash
}

/// What an identifier names: `user`, `ip`, `connection`, or a name of the
/// configuration's choosing (`tenant`, `api_key`, ...).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Kind {
    name: Cow<'static, str>,
    /// [`fingerprint`] of the name, so that in-memory tables need not hash it.
    fingerprint: u64,
}

impl Kind {
    // Written as literals, not through a `const fn`, so that `&Kind::IP`
    // is promoted to a `'static` reference: the compiler sees the borrowed
    // name needs no drop.
    /// A user id, as the authorizer reports it.
    pub const USER: Kind = Kind {
        name: Cow::Borrowed("user"),
        fingerprint: fingerprint("user"),
    };
    /// A client IP address.
    pub const IP: Kind = Kind {
        name: Cow::Borrowed("ip"),
        fingerprint: fingerprint("ip"),
    };
    /// An API Gateway connection id.
    pub const CONNECTION: Kind = Kind {
        name: Cow::Borrowed("connection"),
        fingerprint: fingerprint("connection"),
    };

    /// The kind named `name`, if it is a valid name (see [`check_name`]).
    pub fn new(name: &str) -> Result<Self, NameError> {
        check_name(name)?;
        Ok(match name {
            "user" => Kind::USER,
            "ip" => Kind::IP,
            "connection" => Kind::CONNECTION,
            other => Kind {
                name: Cow::Owned(other.to_owned()),
                fingerprint: fingerprint(other),
            },
        })
    }

    /// The name used in keys, configuration and logs.
    #[inline]
    pub fn as_str(&self) -> &str {
        &self.name
    }

    /// A 64-bit hash of the name, the same in every process.
    #[inline]
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl std::str::FromStr for Kind {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Kind::new(s)
    }
}

/// One bucket of an item: one limit of one policy. Its name is what stores
/// call it (a DynamoDB attribute name): `<policy>@<period in seconds>`, so a
/// limit keeps its bucket when its count changes and gets a new one when its
/// period does.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Slot {
    name: Box<str>,
    /// A hash of the name, so that in-memory tables need not hash it again.
    fingerprint: u64,
}

impl Slot {
    /// The slot called `name`.
    pub fn new(name: impl Into<Box<str>>) -> Self {
        let name = name.into();
        let fingerprint = fingerprint(&name);
        Self { name, fingerprint }
    }

    /// The slot's name.
    #[inline]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A 64-bit hash of the name, the same in every process.
    #[inline]
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }
}

/// Identifiers up to this many bytes are kept as they are in keys; longer
/// ones are replaced by their SHA-256 digest.
pub const MAX_PLAIN_IDENTIFIER_BYTES: usize = 256;

/// The shortest secret [`KeySecret`] accepts, in bytes.
pub const MIN_SECRET_BYTES: usize = 32;

/// A secret that turns identifiers into keyed digests (HMAC-SHA-256), so
/// that stores never hold a raw identifier.
#[derive(Clone)]
pub struct KeySecret(Hmac<Sha256>);

impl fmt::Debug for KeySecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret.
        f.write_str("KeySecret(..)")
    }
}

/// A secret shorter than [`MIN_SECRET_BYTES`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("a key secret must be at least {MIN_SECRET_BYTES} bytes, got {0}")]
pub struct SecretTooShort(pub usize);

impl KeySecret {
    /// A secret from its bytes, at least [`MIN_SECRET_BYTES`] of them.
    pub fn new(secret: &[u8]) -> Result<Self, SecretTooShort> {
        if secret.len() < MIN_SECRET_BYTES {
            return Err(SecretTooShort(secret.len()));
        }
        Ok(Self(
            Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length"),
        ))
    }

    fn digest(&self, kind: &Kind, value: &str) -> [u8; 32] {
        let mut mac = self.0.clone();
        // The kind is part of the message, so that one identifier under two
        // kinds gives unrelated digests.
        mac.update(kind.as_str().as_bytes());
        mac.update(b"#");
        mac.update(value.as_bytes());
        mac.finalize().into_bytes().into()
    }
}

/// The name of one item: a kind and an identifier (or its digest).
///
/// Building a key does not allocate for ordinary identifiers without a secret.
///
/// ```
/// use ratelimiter::key::{Key, Kind};
///
/// let key = Key::new(&Kind::CONNECTION, "L0SM9cOFvHcCIhw=");
/// assert_eq!(key.to_string(), "connection#L0SM9cOFvHcCIhw=");
/// let long = "x".repeat(5000);
/// let key = Key::new(&Kind::USER, &long);
/// assert!(key.to_string().starts_with("user!"));
/// assert!(key.to_string().len() < 80);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Key<'a> {
    kind: &'a Kind,
    id: KeyId<'a>,
}

// Digests are boxed so that the common, plain case stays small.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum KeyId<'a> {
    Plain(&'a str),
    Digest(Box<[u8; 32]>),
    Keyed(Box<[u8; 32]>),
}

impl KeyId<'_> {
    /// The separator that starts the identifier in the key's string form.
    fn separator(&self) -> u8 {
        match self {
            KeyId::Plain(_) => b'#',
            KeyId::Digest(_) => b'!',
            KeyId::Keyed(_) => b'~',
        }
    }

    fn bytes(&self) -> &[u8] {
        match self {
            KeyId::Plain(s) => s.as_bytes(),
            KeyId::Digest(d) | KeyId::Keyed(d) => &d[..],
        }
    }
}

impl<'a> Key<'a> {
    /// The key of `value` as a `kind`, without a secret.
    #[inline]
    pub fn new(kind: &'a Kind, value: &'a str) -> Self {
        let id = if value.len() <= MAX_PLAIN_IDENTIFIER_BYTES {
            KeyId::Plain(value)
        } else {
            KeyId::Digest(Box::new(Sha256::digest(value.as_bytes()).into()))
        };
        Self { kind, id }
    }

    /// The key of `value` as a `kind`: its keyed digest under `secret` when
    /// there is one, else as [`Key::new`].
    #[inline]
    pub fn with_secret(kind: &'a Kind, value: &'a str, secret: Option<&KeySecret>) -> Self {
        match secret {
            None => Self::new(kind, value),
            Some(secret) => Self {
                kind,
                id: KeyId::Keyed(Box::new(secret.digest(kind, value))),
            },
        }
    }

    /// The kind of identifier this key counts against.
    pub fn kind(&self) -> &Kind {
        self.kind
    }

    /// A 64-bit tag of what the key is apart from its identifier's bytes:
    /// the kind and whether the bytes are the identifier, its digest or its
    /// keyed digest. Two keys are equal iff their tags and bytes are.
    #[inline]
    pub fn tag(&self) -> u64 {
        let variant = match self.id {
            KeyId::Plain(_) => 0,
            KeyId::Digest(_) => 0x9e37_79b9_7f4a_7c15,
            KeyId::Keyed(_) => 0x6a09_e667_f3bc_c909,
        };
        self.kind.fingerprint() ^ variant
    }

    /// The identifier's bytes as the key holds them (the identifier, or its digest).
    #[inline]
    pub fn id_bytes(&self) -> &[u8] {
        self.id.bytes()
    }

    /// An owned copy of the identifier's bytes, for stores that keep keys
    /// (with the key's [`Key::tag`] beside them).
    pub fn to_owned_key(&self) -> OwnedKey {
        OwnedKey(self.id.bytes().into())
    }

    /// Whether `owned` holds this key's identifier bytes (the tag is
    /// compared by the caller).
    #[inline]
    pub fn matches(&self, owned: &OwnedKey) -> bool {
        *owned.0 == *self.id.bytes()
    }
}

/// Hashes the key's tag and identifier bytes.
impl Hash for Key<'_> {
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.tag());
        state.write(self.id.bytes());
    }
}

/// The key's string form, as stored in DynamoDB (`pk`) and shown in logs at
/// debug level.
impl fmt::Display for Key<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind.as_str())?;
        match &self.id {
            KeyId::Plain(s) => write!(f, "#{s}"),
            KeyId::Digest(d) | KeyId::Keyed(d) => {
                write!(f, "{}", self.id.separator() as char)?;
                d.iter().try_for_each(|b| write!(f, "{b:02x}"))
            }
        }
    }
}

/// The identifier bytes of a [`Key`], as a store keeps them (one boxed
/// slice, two words); the kind is kept as the key's [`Key::tag`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct OwnedKey(Box<[u8]>);

impl OwnedKey {
    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use proptest::prelude::*;

    use super::*;

    fn kinds() -> impl Strategy<Value = Kind> {
        prop_oneof![
            Just(Kind::USER),
            Just(Kind::IP),
            Just(Kind::CONNECTION),
            Just(Kind::new("tenant").unwrap()),
            Just(Kind::new("ip_v6").unwrap()),
        ]
    }

    /// Identifiers rich in separators, digests' look-alikes, unicode and lengths
    /// around the digest threshold.
    fn identifiers() -> impl Strategy<Value = String> {
        prop_oneof![
            "[#!~a-f0-9é🦀]{0,8}",
            "[#!~x]{250,260}",
            Just(String::new()),
            Just("#".repeat(300)),
        ]
    }

    fn secret() -> KeySecret {
        KeySecret::new(&[7; 32]).unwrap()
    }

    proptest! {
        #[test]
        fn distinct_pairs_give_distinct_keys(
            a in (kinds(), identifiers(), any::<bool>()),
            b in (kinds(), identifiers(), any::<bool>()),
        ) {
            let secret = secret();
            let ka = Key::with_secret(&a.0, &a.1, a.2.then_some(&secret));
            let kb = Key::with_secret(&b.0, &b.1, b.2.then_some(&secret));
            prop_assert_eq!(a == b, ka.to_string() == kb.to_string());
            prop_assert_eq!(a == b, ka == kb);
            prop_assert_eq!(a == b, ka.tag() == kb.tag() && ka.matches(&kb.to_owned_key()));
        }

        #[test]
        fn keys_are_bounded(kind in kinds(), id in ".{0,3000}", keyed in any::<bool>()) {
            let secret = secret();
            let key = Key::with_secret(&kind, &id, keyed.then_some(&secret));
            prop_assert!(key.to_string().len() <= MAX_NAME_BYTES + 1 + MAX_PLAIN_IDENTIFIER_BYTES);
        }
    }

    #[test]
    fn identifiers_that_look_like_separators_stay_apart() {
        let ids = ["", "#", "a#b", "ip#x", "!", "!00", "~", "🦀", "a", "a "];
        let tenant = Kind::new("tenant").unwrap();
        let mut seen = HashSet::new();
        for kind in [&Kind::USER, &Kind::IP, &Kind::CONNECTION, &tenant] {
            for id in ids {
                let key = Key::new(kind, id);
                assert!(seen.insert(key.to_string()), "collision on {key}");
            }
        }
    }

    #[test]
    fn long_identifiers_map_to_distinct_bounded_digests() {
        let a = "a".repeat(3000);
        let mut b = a.clone();
        b.push('b');
        let ka = Key::new(&Kind::USER, &a);
        let kb = Key::new(&Kind::USER, &b);
        assert_ne!(ka.to_string(), kb.to_string());
        assert_eq!(ka.to_string().len(), "user!".len() + 64, "{ka}");
        // Exactly at the threshold the identifier is kept as it is.
        let edge = "e".repeat(MAX_PLAIN_IDENTIFIER_BYTES);
        let key = Key::new(&Kind::CONNECTION, &edge);
        assert_eq!(key.to_string(), format!("connection#{edge}"));
    }

    #[test]
    fn a_secret_hides_every_identifier() {
        let secret = secret();
        let key = Key::with_secret(&Kind::IP, "203.0.113.7", Some(&secret));
        let text = key.to_string();
        assert!(text.starts_with("ip~") && text.len() == 3 + 64, "{text}");
        assert!(!text.contains("203.0.113.7"));
        // Deterministic, and different under another secret or kind.
        assert_eq!(
            Key::with_secret(&Kind::IP, "203.0.113.7", Some(&secret)).to_string(),
            text
        );
        let other = KeySecret::new(&[8; 32]).unwrap();
        assert_ne!(
            Key::with_secret(&Kind::IP, "203.0.113.7", Some(&other)).to_string(),
            text
        );
        assert_ne!(
            Key::with_secret(&Kind::USER, "203.0.113.7", Some(&secret)).to_string()[5..],
            text[3..]
        );
        assert_eq!(KeySecret::new(&[1; 31]).unwrap_err(), SecretTooShort(31));
        assert_eq!(format!("{secret:?}"), "KeySecret(..)");
    }

    #[test]
    fn owned_keys_keep_the_identifier_bytes_and_tags_the_rest() {
        let secret = secret();
        for id in ["", "1.2.3.4", &"z".repeat(400)] {
            let plain = Key::new(&Kind::IP, id);
            let keyed = Key::with_secret(&Kind::IP, id, Some(&secret));
            assert!(plain.matches(&plain.to_owned_key()));
            assert_ne!(plain.tag(), keyed.tag());
            assert_ne!(plain.tag(), Key::new(&Kind::USER, id).tag());
        }
        assert_eq!(fingerprint("ip"), Kind::IP.fingerprint());
        assert_eq!(
            Kind::new("tenant").unwrap().fingerprint(),
            fingerprint("tenant")
        );
    }

    #[test]
    fn names_are_checked_and_quoted_briefly() {
        for good in ["user", "tenant", "api_key", "A1", "x"] {
            assert!(Kind::new(good).is_ok(), "{good}");
        }
        for bad in ["", "1st", "a-b", "a#b", "a b", "é", &"k".repeat(65)] {
            let err = Kind::new(bad).unwrap_err().to_string();
            assert!(err.contains("not a valid name"), "{err}");
            assert!(err.len() < 200, "{err}");
        }
        assert_eq!(Kind::new("ip").unwrap(), Kind::IP);
    }

    #[test]
    fn slots_have_stable_fingerprints() {
        let a = Slot::new("heartbeat@60");
        assert_eq!(a, Slot::new("heartbeat@60"));
        assert_ne!(a.fingerprint(), Slot::new("heartbeat@61").fingerprint());
        assert_eq!(a.name(), "heartbeat@60");
    }
}
