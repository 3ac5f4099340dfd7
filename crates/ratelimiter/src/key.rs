//! Operations, identifiers, and the keys that name one bucket in a store.
//!
//! A key is built from (operation, identifier kind, identifier). Its string
//! form is `<operation>#<kind>#<identifier>`: operation and kind come from
//! fixed sets without `#` or `!`, and the identifier comes last, so no
//! identifier, whatever characters it holds (separators, unicode, nothing),
//! can produce another key's string. An identifier longer than
//! [`MAX_PLAIN_IDENTIFIER_BYTES`] is replaced by its SHA-256 digest and
//! written `<operation>#<kind>!<hex digest>`: the `!` keeps digests apart
//! from plain identifiers, and the key stays far below DynamoDB's 2048-byte
//! limit on partition keys.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;

use sha2::{Digest, Sha256};

/// The four operations the limiter knows, with the seed's defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Operation {
    /// A speaker creating a session: 50 per hour per user.
    SessionCreate,
    /// A listener joining a session: 10 per minute per IP address.
    ListenerJoin,
    /// Any WebSocket connection attempt: 20 per minute per IP address.
    ConnectionAttempt,
    /// A heartbeat message: 2 per minute per connection.
    Heartbeat,
}

impl Operation {
    /// Every operation, in a fixed order.
    pub const ALL: [Operation; 4] = [
        Operation::SessionCreate,
        Operation::ListenerJoin,
        Operation::ConnectionAttempt,
        Operation::Heartbeat,
    ];

    /// The name used in keys, logs and configuration (`session_create`, …).
    pub const fn as_str(self) -> &'static str {
        match self {
            Operation::SessionCreate => "session_create",
            Operation::ListenerJoin => "listener_join",
            Operation::ConnectionAttempt => "connection_attempt",
            Operation::Heartbeat => "heartbeat",
        }
    }

    /// The kind of identifier this operation is limited by in the seed.
    pub fn identifier_kind(self) -> IdentifierKind {
        match self {
            Operation::SessionCreate => IdentifierKind::User,
            Operation::ListenerJoin | Operation::ConnectionAttempt => IdentifierKind::Ip,
            Operation::Heartbeat => IdentifierKind::Connection,
        }
    }

    fn index(self) -> u8 {
        self as u8
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An operation name that is not one of the four.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown operation {0:?}: expected one of session_create, listener_join, connection_attempt, heartbeat (or the same with '-')"
)]
pub struct UnknownOperation(pub String);

impl FromStr for Operation {
    type Err = UnknownOperation;

    /// Accepts the snake-case names and their kebab-case forms (`session-create`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Operation::ALL
            .into_iter()
            .find(|op| op.as_str() == s || op.as_str().replace('_', "-") == s)
            .ok_or_else(|| UnknownOperation(s.to_owned()))
    }
}

/// What an identifier names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum IdentifierKind {
    /// A user id, as the authorizer reports it.
    User,
    /// A client IP address.
    Ip,
    /// An API Gateway connection id.
    Connection,
}

impl IdentifierKind {
    /// The name used in keys and in the seed's status query (`user`, `ip`, `connection`).
    pub fn as_str(self) -> &'static str {
        match self {
            IdentifierKind::User => "user",
            IdentifierKind::Ip => "ip",
            IdentifierKind::Connection => "connection",
        }
    }
}

impl fmt::Display for IdentifierKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An identifier kind that is not `user`, `ip` or `connection`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown identifier type {0:?}: expected user, ip or connection")]
pub struct UnknownIdentifierKind(pub String);

impl FromStr for IdentifierKind {
    type Err = UnknownIdentifierKind;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "user" => Ok(IdentifierKind::User),
            "ip" => Ok(IdentifierKind::Ip),
            "connection" => Ok(IdentifierKind::Connection),
            _ => Err(UnknownIdentifierKind(s.to_owned())),
        }
    }
}

/// Who a request is counted against: a kind and a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Identifier<'a> {
    /// What the value names.
    pub kind: IdentifierKind,
    /// The value itself, any string (even empty).
    pub value: &'a str,
}

impl<'a> Identifier<'a> {
    /// A user id.
    pub fn user(value: &'a str) -> Self {
        Self {
            kind: IdentifierKind::User,
            value,
        }
    }

    /// A client IP address.
    pub fn ip(value: &'a str) -> Self {
        Self {
            kind: IdentifierKind::Ip,
            value,
        }
    }

    /// An API Gateway connection id.
    pub fn connection(value: &'a str) -> Self {
        Self {
            kind: IdentifierKind::Connection,
            value,
        }
    }
}

/// Identifiers up to this many bytes are kept as they are in keys; longer
/// ones are replaced by their SHA-256 digest.
pub const MAX_PLAIN_IDENTIFIER_BYTES: usize = 256;

/// The name of one bucket: operation, identifier kind, and the identifier
/// (or its digest, for long identifiers).
///
/// Building a key does not allocate for ordinary identifiers.
///
/// ```
/// use ratelimiter::key::{Identifier, Key, Operation};
///
/// let key = Key::new(Operation::Heartbeat, Identifier::connection("L0SM9cOFvHcCIhw="));
/// assert_eq!(key.to_string(), "heartbeat#connection#L0SM9cOFvHcCIhw=");
/// let long = "x".repeat(5000);
/// let key = Key::new(Operation::SessionCreate, Identifier::user(&long));
/// assert!(key.to_string().starts_with("session_create#user!"));
/// assert!(key.to_string().len() < 100);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Key<'a> {
    operation: Operation,
    kind: IdentifierKind,
    id: KeyId<'a>,
}

// The digest is boxed so that the common, plain case stays three words.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum KeyId<'a> {
    Plain(&'a str),
    Digest(Box<[u8; 32]>),
}

impl<'a> Key<'a> {
    /// The key of `identifier` for `operation`.
    #[inline]
    pub fn new(operation: Operation, identifier: Identifier<'a>) -> Self {
        let id = if identifier.value.len() <= MAX_PLAIN_IDENTIFIER_BYTES {
            KeyId::Plain(identifier.value)
        } else {
            KeyId::Digest(Box::new(Sha256::digest(identifier.value.as_bytes()).into()))
        };
        Self {
            operation,
            kind: identifier.kind,
            id,
        }
    }

    /// The operation this key counts.
    pub fn operation(&self) -> Operation {
        self.operation
    }

    /// The kind of identifier this key counts against.
    pub fn kind(&self) -> IdentifierKind {
        self.kind
    }

    /// An owned copy, for stores that keep keys.
    pub fn to_owned_key(&self) -> OwnedKey {
        let (digest, id): (bool, &[u8]) = match &self.id {
            KeyId::Plain(s) => (false, s.as_bytes()),
            KeyId::Digest(d) => (true, &d[..]),
        };
        OwnedKey {
            operation: self.operation,
            kind: self.kind,
            digest,
            id: id.into(),
        }
    }

    /// Whether `owned` is a copy of this key.
    #[inline]
    pub fn matches(&self, owned: &OwnedKey) -> bool {
        self.operation == owned.operation
            && self.kind == owned.kind
            && match &self.id {
                KeyId::Plain(s) => !owned.digest && s.as_bytes() == &*owned.id,
                KeyId::Digest(d) => owned.digest && d[..] == *owned.id,
            }
    }
}

/// Hashes the key's parts, consistently with [`OwnedKey`]'s hash.
impl Hash for Key<'_> {
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u8(self.operation.index());
        state.write_u8(self.kind as u8);
        match &self.id {
            KeyId::Plain(s) => {
                state.write_u8(0);
                state.write(s.as_bytes());
            }
            KeyId::Digest(d) => {
                state.write_u8(1);
                state.write(&d[..]);
            }
        }
    }
}

/// The key's string form, as stored in DynamoDB and shown in logs at debug level.
impl fmt::Display for Key<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.operation, self.kind)?;
        match &self.id {
            KeyId::Plain(s) => write!(f, "#{s}"),
            KeyId::Digest(d) => {
                f.write_str("!")?;
                d.iter().try_for_each(|b| write!(f, "{b:02x}"))
            }
        }
    }
}

/// An owned [`Key`], as a store keeps it: four words, so that a table of
/// them stays small.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnedKey {
    operation: Operation,
    kind: IdentifierKind,
    digest: bool,
    id: Box<[u8]>,
}

impl OwnedKey {
    /// The borrowed form.
    pub fn as_key(&self) -> Key<'_> {
        let id = if self.digest {
            let digest: [u8; 32] = (*self.id).try_into().expect("digests are 32 bytes");
            KeyId::Digest(Box::new(digest))
        } else {
            KeyId::Plain(std::str::from_utf8(&self.id).expect("plain ids come from a str"))
        };
        Key {
            operation: self.operation,
            kind: self.kind,
            id,
        }
    }
}

impl Hash for OwnedKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_key().hash(state);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::hash::BuildHasher;

    use proptest::prelude::*;

    use super::*;

    fn kinds() -> impl Strategy<Value = IdentifierKind> {
        prop_oneof![
            Just(IdentifierKind::User),
            Just(IdentifierKind::Ip),
            Just(IdentifierKind::Connection)
        ]
    }

    fn operations() -> impl Strategy<Value = Operation> {
        proptest::sample::select(Operation::ALL.to_vec())
    }

    /// Identifiers rich in separators, digests' look-alikes, unicode and lengths
    /// around the digest threshold.
    fn identifiers() -> impl Strategy<Value = String> {
        prop_oneof![
            "[#!a-f0-9é🦀]{0,8}",
            "[#!x]{250,260}",
            Just(String::new()),
            Just("#".repeat(300)),
        ]
    }

    proptest! {
        #[test]
        fn distinct_triples_give_distinct_keys(
            a in (operations(), kinds(), identifiers()),
            b in (operations(), kinds(), identifiers()),
        ) {
            let ka = Key::new(a.0, Identifier { kind: a.1, value: &a.2 });
            let kb = Key::new(b.0, Identifier { kind: b.1, value: &b.2 });
            prop_assert_eq!(a == b, ka.to_string() == kb.to_string());
            prop_assert_eq!(a == b, ka == kb);
            prop_assert_eq!(a == b, ka.matches(&kb.to_owned_key()));
        }

        #[test]
        fn keys_are_bounded(op in operations(), kind in kinds(), id in ".{0,3000}") {
            let key = Key::new(op, Identifier { kind, value: &id });
            prop_assert!(key.to_string().len() <= 30 + MAX_PLAIN_IDENTIFIER_BYTES);
        }
    }

    #[test]
    fn identifiers_that_look_like_separators_stay_apart() {
        let ids = ["", "#", "a#b", "ip#x", "!", "!00", "🦀", "a", "a "];
        let mut seen = HashSet::new();
        for op in Operation::ALL {
            for kind in [
                IdentifierKind::User,
                IdentifierKind::Ip,
                IdentifierKind::Connection,
            ] {
                for id in ids {
                    let key = Key::new(op, Identifier { kind, value: id });
                    assert!(seen.insert(key.to_string()), "collision on {key}");
                }
            }
        }
    }

    #[test]
    fn long_identifiers_map_to_distinct_bounded_digests() {
        let a = "a".repeat(3000);
        let mut b = a.clone();
        b.push('b');
        let ka = Key::new(Operation::SessionCreate, Identifier::user(&a));
        let kb = Key::new(Operation::SessionCreate, Identifier::user(&b));
        assert_ne!(ka.to_string(), kb.to_string());
        assert_eq!(
            ka.to_string().len(),
            "session_create#user!".len() + 64,
            "{ka}"
        );
        // Exactly at the threshold the identifier is kept as it is.
        let edge = "e".repeat(MAX_PLAIN_IDENTIFIER_BYTES);
        let key = Key::new(Operation::Heartbeat, Identifier::connection(&edge));
        assert_eq!(key.to_string(), format!("heartbeat#connection#{edge}"));
    }

    #[test]
    fn owned_keys_hash_like_borrowed_ones() {
        let state = std::collections::hash_map::RandomState::new();
        for id in ["", "1.2.3.4", &"z".repeat(400)] {
            let key = Key::new(Operation::ListenerJoin, Identifier::ip(id));
            assert_eq!(
                state.hash_one(&key),
                state.hash_one(key.to_owned_key()),
                "{key}"
            );
            assert_eq!(key.to_owned_key().as_key(), key);
        }
    }

    #[test]
    fn operation_names_parse_both_ways() {
        for op in Operation::ALL {
            assert_eq!(op.as_str().parse::<Operation>().unwrap(), op);
            assert_eq!(
                op.as_str().replace('_', "-").parse::<Operation>().unwrap(),
                op
            );
        }
        let err = "sessions".parse::<Operation>().unwrap_err();
        assert!(err.to_string().contains("\"sessions\""), "{err}");
        assert_eq!("ip".parse::<IdentifierKind>().unwrap(), IdentifierKind::Ip);
        assert!("IP".parse::<IdentifierKind>().is_err());
    }
}
