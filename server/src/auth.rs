//! Bearer tokens with roles: who may call what.
//!
//! ```yaml
//! # server.auth.tokens_file (written by `quiver token create`)
//! tokens:
//!   - name: scorer-eu
//!     sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
//!     role: reader
//!     services: [fraud_v1]      # optional: only these feature services
//! ```
//!
//! The server keeps only SHA-256 digests; a presented token is hashed and compared
//! with every entry in constant time. The file is re-read when it changes, so a
//! token is revoked by deleting its line, without a restart. Roles are ordered,
//! each including the ones before it: `reader` < `trainer` < `writer` < `operator`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use tracing::{info, warn};

use crate::error::ErrorKind;

/// What a token may do; each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Online lookups, GetSchema, GetFlightInfo and ListActions.
    Reader,
    /// Historical retrieval, ListFlights, `entity_sql`.
    Trainer,
    /// Push (writes of feature rows).
    Writer,
    /// Materialize, status and other administrative actions.
    Operator,
}

impl Role {
    /// Every role, weakest first.
    pub const ALL: [Role; 4] = [Role::Reader, Role::Trainer, Role::Writer, Role::Operator];

    /// The role's name as written in the tokens file.
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Trainer => "trainer",
            Role::Writer => "writer",
            Role::Operator => "operator",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown role {s:?} (reader, trainer, writer, operator)"))
    }
}

/// One entry of the tokens file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    /// Who holds the token (appears in logs; the token never does).
    pub name: String,
    /// Hex SHA-256 of the token.
    pub sha256: String,
    /// What it may do.
    pub role: Role,
    /// When set, the feature services it may read (and nothing outside them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub services: Option<Vec<String>>,
}

/// The tokens file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokensFile {
    /// Its entries.
    #[serde(default)]
    pub tokens: Vec<TokenEntry>,
}

/// Errors of authentication and of the tokens file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No `authorization: Bearer ...` header, or an unknown token.
    #[error("{0}")]
    Unauthenticated(&'static str),
    /// A valid token without the rights for this call.
    #[error("{0}")]
    PermissionDenied(String),
    /// The tokens file cannot be read or parsed.
    #[error("tokens file {}: {message}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

impl Error {
    /// How the error reads to a caller.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Unauthenticated(_) => ErrorKind::Unauthenticated,
            Error::PermissionDenied(_) => ErrorKind::PermissionDenied,
            Error::File { .. } => ErrorKind::InvalidArgument,
        }
    }
}

/// The identity behind a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The entry's name.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// Its services, when restricted.
    pub services: Option<Vec<String>>,
}

impl Principal {
    /// Everyone, when the server has no authentication configured.
    pub(crate) fn anonymous() -> Self {
        Self {
            name: "anonymous".into(),
            role: Role::Operator,
            services: None,
        }
    }

    /// PERMISSION_DENIED unless the role includes `needed`.
    pub(crate) fn require(&self, needed: Role, what: &str) -> Result<(), Error> {
        if self.role >= needed {
            Ok(())
        } else {
            Err(Error::PermissionDenied(format!(
                "{what} needs the {} role; token {:?} has {}",
                needed.as_str(),
                self.name,
                self.role.as_str()
            )))
        }
    }
}

/// The hex SHA-256 digest of a token, as stored in the tokens file.
pub fn digest(token: &str) -> String {
    hex::encode(ring::digest::digest(
        &ring::digest::SHA256,
        token.as_bytes(),
    ))
}

/// A new random token (256 bits), with a prefix that makes it easy to spot in
/// secret scanners.
pub fn generate_token() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("qvt_{}", hex::encode(bytes))
}

/// Reads a tokens file (missing = no tokens).
pub fn read_tokens(path: &Path) -> Result<TokensFile, Error> {
    let err = |message: String| Error::File {
        path: path.to_path_buf(),
        message,
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(TokensFile::default()),
        Err(e) => return Err(err(e.to_string())),
    };
    if text.trim().is_empty() {
        return Ok(TokensFile::default());
    }
    let file: TokensFile = serde_yaml::from_str(&text).map_err(|e| err(e.to_string()))?;
    for t in &file.tokens {
        let ok = t.sha256.len() == 64 && t.sha256.bytes().all(|b| b.is_ascii_hexdigit());
        if !ok {
            return Err(err(format!(
                "token {:?}: sha256 must be 64 hex digits (the digest, never the token)",
                t.name
            )));
        }
    }
    Ok(file)
}

/// Creates a token: appends its entry to the tokens file (written whole to a
/// temporary file, then renamed) and returns the token, which is shown once.
pub fn create_token(
    path: &Path,
    name: &str,
    role: Role,
    services: Option<Vec<String>>,
) -> Result<String, Error> {
    let mut file = read_tokens(path)?;
    if file.tokens.iter().any(|t| t.name == name) {
        return Err(Error::File {
            path: path.to_path_buf(),
            message: format!("a token named {name:?} exists; remove it first or pick another name"),
        });
    }
    let token = generate_token();
    file.tokens.push(TokenEntry {
        name: name.to_string(),
        sha256: digest(&token),
        role,
        services,
    });
    let io = |e: std::io::Error| Error::File {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = path.with_extension("tmp");
    let text = serde_yaml::to_string(&file).expect("tokens serialize");
    std::fs::write(&tmp, text).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    Ok(token)
}

struct Loaded {
    entries: Vec<([u8; 32], Arc<Principal>)>,
    stamp: Option<(SystemTime, u64)>,
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

fn load(path: &Path) -> Result<Loaded, Error> {
    let stamp = stamp(path);
    let file = read_tokens(path)?;
    let entries = (file.tokens.into_iter())
        .map(|t| {
            let mut d = [0u8; 32];
            hex::decode_to_slice(&t.sha256, &mut d).expect("checked as 64 hex digits");
            let p = Principal {
                name: t.name,
                role: t.role,
                services: t.services,
            };
            (d, Arc::new(p))
        })
        .collect();
    Ok(Loaded { entries, stamp })
}

/// Checks bearer tokens against the tokens file, following its changes.
pub struct Authenticator {
    path: PathBuf,
    loaded: RwLock<Loaded>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// How often the tokens file is checked for changes.
pub const RELOAD_EVERY: Duration = Duration::from_millis(500);

impl Authenticator {
    /// Loads the tokens file; an unreadable or invalid file is an error (a missing
    /// one is empty: every call is then UNAUTHENTICATED until tokens are created).
    pub fn open(path: &Path) -> Result<Self, Error> {
        let loaded = load(path)?;
        info!(path = %path.display(), tokens = loaded.entries.len(), "tokens loaded");
        Ok(Self {
            path: path.to_path_buf(),
            loaded: RwLock::new(loaded),
        })
    }

    /// Re-reads the file if it changed since the last load. An invalid new version
    /// is logged and the previous tokens stay in force.
    pub fn reload_if_changed(&self) {
        let now = stamp(&self.path);
        if self.loaded.read().expect("not poisoned").stamp == now {
            return;
        }
        match load(&self.path) {
            Ok(l) => {
                info!(path = %self.path.display(), tokens = l.entries.len(), "tokens reloaded");
                *self.loaded.write().expect("not poisoned") = l;
            }
            Err(e) => {
                warn!(error = %e, "tokens file changed but is invalid; keeping the previous tokens")
            }
        }
    }

    /// Follows the file's changes from a background task until the returned
    /// handle is dropped or aborted.
    pub fn watch(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(RELOAD_EVERY).await;
                let Some(this) = weak.upgrade() else { return };
                this.reload_if_changed();
            }
        })
    }

    /// The principal of an `authorization` header value (`Bearer <token>`).
    pub fn authenticate(&self, header: Option<&str>) -> Result<Arc<Principal>, Error> {
        let Some(header) = header else {
            return Err(Error::Unauthenticated(
                "this server needs a token: send `authorization: Bearer <token>`",
            ));
        };
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or(Error::Unauthenticated(
                "the authorization header must be `Bearer <token>`",
            ))?
            .trim();
        let presented = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
        let loaded = self.loaded.read().expect("not poisoned");
        // Compare with every entry, without stopping at a match, in constant time.
        let mut found = None;
        for (d, p) in &loaded.entries {
            if bool::from(d.as_slice().ct_eq(presented.as_ref())) {
                found = Some(p.clone());
            }
        }
        found.ok_or(Error::Unauthenticated("unknown or revoked token"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_authenticate_revoke() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.yaml");
        let a = create_token(&path, "scorer", Role::Reader, Some(vec!["fraud".into()])).unwrap();
        let b = create_token(&path, "ops", Role::Operator, None).unwrap();
        assert!(create_token(&path, "ops", Role::Reader, None).is_err());
        assert_ne!(a, b);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            !text.contains(&a) && !text.contains(&b),
            "tokens are never stored"
        );

        let auth = Authenticator::open(&path).unwrap();
        let p = auth.authenticate(Some(&format!("Bearer {a}"))).unwrap();
        assert_eq!((p.name.as_str(), p.role), ("scorer", Role::Reader));
        assert_eq!(p.services.as_deref(), Some(&["fraud".to_string()][..]));
        assert!(p.require(Role::Trainer, "historical retrieval").is_err());
        assert!(p.require(Role::Reader, "lookup").is_ok());
        let ops = auth.authenticate(Some(&format!("Bearer {b}"))).unwrap();
        assert!(ops.require(Role::Writer, "push").is_ok());

        for bad in [
            None,
            Some("Bearer nope"),
            Some(a.as_str()),
            Some("Basic eDp5"),
        ] {
            let e = auth.authenticate(bad).unwrap_err();
            assert!(matches!(e, Error::Unauthenticated(_)), "{e}");
            assert!(!e.to_string().contains(&a));
        }

        // Revoke by rewriting the file: the reload sees it.
        let mut file = read_tokens(&path).unwrap();
        file.tokens.retain(|t| t.name != "scorer");
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(&path, serde_yaml::to_string(&file).unwrap() + "\n").unwrap();
        auth.reload_if_changed();
        assert!(auth.authenticate(Some(&format!("Bearer {a}"))).is_err());
        assert!(auth.authenticate(Some(&format!("Bearer {b}"))).is_ok());

        // A broken file keeps the previous tokens.
        std::fs::write(&path, "tokens: [{name: x}]\n").unwrap();
        auth.reload_if_changed();
        assert!(auth.authenticate(Some(&format!("Bearer {b}"))).is_ok());
        assert!(Authenticator::open(&path).is_err());
    }
}
