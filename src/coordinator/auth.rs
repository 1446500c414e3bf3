//! Who may ask the coordinator what: bearer tokens, each naming a client and its rights.
//!
//! The operator keeps a token file (`hch coordinator --tokens FILE`) with one entry per client:
//!
//! ```json
//! {"clients": [
//!   {"name": "alice", "token_sha256": "<64 hex digits>", "rights": ["ask", "status"]}
//! ]}
//! ```
//!
//! Only the SHA-256 of each token is stored (`hch token new NAME` makes a token and prints its
//! entry), so the file does not hold credentials. A client sends `authorization: Bearer <token>`
//! in its metadata; the coordinator hashes it and compares the hash with every entry in constant
//! time. No token, or one nobody was given: UNAUTHENTICATED. A valid token without the call's
//! right: PERMISSION_DENIED. A client reads the traces of its own trees only.
//!
//! Tokens travel in the clear until the transport is encrypted (TLS is still to come): use them on
//! networks you trust, or behind a TLS-terminating proxy.

use std::path::Path;

use serde::Deserialize;

use crate::rpc::ServiceError;

/// The metadata key a client's token travels in.
pub const AUTHORIZATION: &str = "authorization";

/// What a client may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Right {
    /// Ask and AskStream, and GetTrace of the client's own trees.
    Ask,
    /// Status: the workers' addresses and load.
    Status,
}

impl Right {
    fn name(self) -> &'static str {
        match self {
            Right::Ask => "ask",
            Right::Status => "status",
        }
    }
}

/// The client a request came from: a name from the token file, or `None` when the coordinator
/// runs without tokens (every caller is the same anonymous client).
pub type ClientName = Option<std::sync::Arc<str>>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    clients: Vec<Entry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    token_sha256: String,
    rights: Vec<Right>,
}

struct Client {
    name: std::sync::Arc<str>,
    hash: [u8; 32],
    rights: Vec<Right>,
}

/// The token file, loaded and checked.
pub struct Tokens {
    clients: Vec<Client>,
}

impl std::fmt::Debug for Tokens {
    /// The names only: never the hashes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.clients.iter().map(|c| &*c.name))
            .finish()
    }
}

impl Tokens {
    /// Reads a token file; the error names the file and the entry at fault.
    pub fn load(path: &Path) -> Result<Self, String> {
        let bytes = crate::fsutil::read_small(path, 1 << 20)
            .map_err(|e| format!("token file {}: {e}", path.display()))?;
        Self::parse(&bytes).map_err(|e| format!("token file {}: {e}", path.display()))
    }

    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let file: TokenFile = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        let mut clients = Vec::with_capacity(file.clients.len());
        for (i, entry) in file.clients.into_iter().enumerate() {
            let hash: [u8; 32] = hex::decode(&entry.token_sha256)
                .ok()
                .and_then(|h| h.try_into().ok())
                .ok_or_else(|| {
                    format!(
                        "client {i} ({:?}): token_sha256 must be 64 hex digits",
                        entry.name
                    )
                })?;
            if entry.name.is_empty() {
                return Err(format!("client {i}: the name is empty"));
            }
            if clients.iter().any(|c: &Client| *c.name == *entry.name) {
                return Err(format!("client {:?} is listed twice", entry.name));
            }
            clients.push(Client {
                name: entry.name.into(),
                hash,
                rights: entry.rights,
            });
        }
        Ok(Self { clients })
    }

    /// The client whose token `metadata` carries, if it has `right`.
    pub fn authorize(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        right: Right,
    ) -> Result<std::sync::Arc<str>, ServiceError> {
        let token = metadata
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                ServiceError::Unauthenticated(
                    "this coordinator needs a token: send `authorization: Bearer <token>`"
                        .to_string(),
                )
            })?;
        let hash = crate::fsutil::sha256(token.trim().as_bytes());
        // Every entry is compared, in constant time, so the time taken says nothing about which
        // bytes of which hash matched.
        let mut found = None;
        for client in &self.clients {
            if constant_time_eq(&client.hash, &hash) {
                found = Some(client);
            }
        }
        let client = found.ok_or_else(|| {
            ServiceError::Unauthenticated("the token is not one this coordinator knows".into())
        })?;
        if !client.rights.contains(&right) {
            return Err(ServiceError::PermissionDenied(format!(
                "client {:?} has no {:?} right",
                &*client.name,
                right.name()
            )));
        }
        Ok(client.name.clone())
    }
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A fresh token (256 bits from the OS, hex) and its token-file entry for `name` with `rights`.
pub fn new_token(name: &str, rights: &[&str]) -> Result<(String, String), String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| format!("no randomness from the system: {e}"))?;
    let token = hex::encode(bytes);
    let entry = serde_json::json!({
        "name": name,
        "token_sha256": crate::fsutil::sha256_bytes(token.as_bytes()),
        "rights": rights,
    });
    Ok((token, entry.to_string()))
}

/// Adds `authorization: Bearer <token>` to a request, if there is a token.
pub fn attach<T>(request: &mut tonic::Request<T>, token: Option<&str>) {
    if let Some(value) = token.and_then(|t| format!("Bearer {t}").parse().ok()) {
        request.metadata_mut().insert(AUTHORIZATION, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    fn tokens() -> (Tokens, String, String) {
        let (alice, alice_entry) = new_token("alice", &["ask", "status"]).unwrap();
        let (bob, bob_entry) = new_token("bob", &["status"]).unwrap();
        let file = format!("{{\"clients\": [{alice_entry}, {bob_entry}]}}");
        (Tokens::parse(file.as_bytes()).unwrap(), alice, bob)
    }

    fn with(token: Option<&str>) -> tonic::metadata::MetadataMap {
        let mut request = tonic::Request::new(());
        attach(&mut request, token);
        request.metadata().clone()
    }

    #[test]
    fn tokens_name_their_client_and_rights_are_checked() {
        let (tokens, alice, bob) = tokens();
        assert_eq!(
            &*tokens.authorize(&with(Some(&alice)), Right::Ask).unwrap(),
            "alice"
        );
        assert_eq!(
            &*tokens.authorize(&with(Some(&bob)), Right::Status).unwrap(),
            "bob"
        );
        let e = tokens.authorize(&with(Some(&bob)), Right::Ask).unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{e}");
        for token in [None, Some("not-a-token"), Some("")] {
            let e = tokens.authorize(&with(token), Right::Status).unwrap_err();
            assert_eq!(e.code(), Code::Unauthenticated, "{e}");
        }
    }

    #[test]
    fn bad_token_files_are_refused_naming_the_entry() {
        for (file, needle) in [
            (
                r#"{"clients": [{"name": "a", "token_sha256": "zz", "rights": []}]}"#,
                "64 hex",
            ),
            (
                r#"{"clients": [{"name": "", "token_sha256": "00", "rights": []}]}"#,
                "64 hex",
            ),
            (
                r#"{"clients": [{"name": "a", "token_sha256": "x", "rights": ["root"]}]}"#,
                "root",
            ),
            (r#"{"users": []}"#, "users"),
        ] {
            let e = Tokens::parse(file.as_bytes()).err().unwrap();
            assert!(e.contains(needle), "{file}: {e}");
        }
        let (_, entry) = new_token("a", &["ask"]).unwrap();
        let twice = format!("{{\"clients\": [{entry}, {entry}]}}");
        let e = Tokens::parse(twice.as_bytes()).err().unwrap();
        assert!(e.contains("twice"), "{e}");
    }
}
