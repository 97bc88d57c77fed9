//! Dashboard sessions, in memory: a restart signs everyone out. The cookie holds a
//! random id, never the API token; the map is keyed by the id's SHA-256 so a memory
//! dump does not hold usable cookies, and it is bounded.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::crypto;

/// The session cookie's name.
pub const COOKIE: &str = "classhook_session";

/// How long a signed-in session lives (also the cookie's `Max-Age`).
pub const SIGNED_IN_FOR: Duration = Duration::from_secs(12 * 3600);

/// How long a session that has not signed in lives (the login form's CSRF token).
pub const ANONYMOUS_FOR: Duration = Duration::from_secs(30 * 60);

/// The most sessions held; beyond it the ones closest to expiry go first.
pub const MAX_SESSIONS: usize = 10_000;

/// What a request's session says.
#[derive(Debug, Clone)]
pub struct Current {
    /// The CSRF token every form of this session carries.
    pub csrf: String,
    pub signed_in: bool,
}

struct Entry {
    current: Current,
    expires: Instant,
}

pub struct Sessions {
    entries: Mutex<HashMap<[u8; 32], Entry>>,
    max: usize,
}

impl Default for Sessions {
    fn default() -> Self {
        Sessions::with_max(MAX_SESSIONS)
    }
}

impl Sessions {
    pub fn with_max(max: usize) -> Sessions {
        Sessions {
            entries: Mutex::new(HashMap::new()),
            max: max.max(1),
        }
    }

    /// The live session the cookie value names.
    pub fn get(&self, id: &str) -> Option<Current> {
        let key = crypto::sha256(id.as_bytes());
        let mut entries = self.lock();
        match entries.get(&key) {
            Some(entry) if entry.expires > Instant::now() => Some(entry.current.clone()),
            Some(_) => {
                entries.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Starts a session; returns its id (for the cookie) and what it holds.
    pub fn create(&self, signed_in: bool) -> (String, Current) {
        let id = random_token();
        let current = Current {
            csrf: random_token(),
            signed_in,
        };
        let lifetime = if signed_in {
            SIGNED_IN_FOR
        } else {
            ANONYMOUS_FOR
        };
        let mut entries = self.lock();
        if entries.len() >= self.max {
            let now = Instant::now();
            entries.retain(|_, e| e.expires > now);
        }
        while entries.len() >= self.max {
            // Anonymous sessions expire first, so a flood of login pages evicts
            // itself before it evicts people who signed in.
            let Some(oldest) = entries
                .iter()
                .min_by_key(|(_, e)| (e.current.signed_in, e.expires))
                .map(|(k, _)| *k)
            else {
                break;
            };
            entries.remove(&oldest);
        }
        entries.insert(
            crypto::sha256(id.as_bytes()),
            Entry {
                current: current.clone(),
                expires: Instant::now() + lifetime,
            },
        );
        (id, current)
    }

    pub fn remove(&self, id: &str) {
        self.lock().remove(&crypto::sha256(id.as_bytes()));
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Entry>> {
        // A panic while holding the lock leaves a consistent map: keep going.
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// 256 random bits, hex.
fn random_token() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// The `Set-Cookie` value for a session id (`None`: clear the cookie).
pub fn cookie(id: Option<&str>, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    match id {
        Some(id) => format!(
            "{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/ui; Max-Age={}{secure}",
            SIGNED_IN_FOR.as_secs()
        ),
        None => format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/ui; Max-Age=0{secure}"),
    }
}

/// The session id a `Cookie` header carries.
pub fn id_from(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_found_by_id_and_bounded() {
        let sessions = Sessions::with_max(2);
        let (signed, _) = sessions.create(true);
        let (anonymous, _) = sessions.create(false);
        assert!(sessions.get(&signed).unwrap().signed_in);
        assert!(!sessions.get(&anonymous).unwrap().signed_in);
        let (third, _) = sessions.create(true);
        assert_eq!(sessions.len(), 2);
        assert!(sessions.get(&anonymous).is_none(), "anonymous goes first");
        assert!(sessions.get(&signed).is_some() && sessions.get(&third).is_some());
        sessions.remove(&signed);
        assert!(sessions.get(&signed).is_none());
        assert!(sessions.get("not-a-session").is_none());
    }

    #[test]
    fn the_cookie_is_http_only_strict_and_scoped() {
        let set = cookie(Some("abc"), true);
        for flag in ["HttpOnly", "SameSite=Strict", "Path=/ui", "Secure"] {
            assert!(set.contains(flag), "{set}");
        }
        assert!(!cookie(Some("abc"), false).contains("Secure"));
        let mut headers = axum::http::HeaderMap::new();
        headers.insert("cookie", "a=b; classhook_session=xyz; c=d".parse().unwrap());
        assert_eq!(id_from(&headers).as_deref(), Some("xyz"));
    }
}
