//! Signed join tokens: with `--require-join-token`, a connection may join only the groups its
//! token names, and send only where the token allows.
//!
//! A token is a JWT (HS256 with `--join-token-secret`, RS256 or ES256 with
//! `--join-token-public-key`) whose claims are `exp` (required), `groups` (the groups the holder
//! may join; `"*"` for any), `send` (the groups it may send to; `"*"` for any; default: its
//! `groups`), and for the cluster API: `sub` (the connection's uid, which it cannot change),
//! `presence` (groups whose members it may list and whose join/leave events it may receive),
//! `send_to_uid` (uids it may send to; `"*"` for any), `send_to_all` and `send_to_client`
//! (booleans; default false). `count` is allowed on the groups of `groups` and `presence`. A
//! client presents it in the WebSocket URL (`?token=...`, what a browser can do) or with
//! `{"cmd":"auth","token":"..."}` at any time, which replaces the connection's rights.
//!
//! [`JoinTokens`] verifies tokens; [`Access`] is one connection's rights, checked at each join
//! and send. Tokens are never logged.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use protocol::{CommandError, ErrorCode};
use tokio_tungstenite::tungstenite::handshake::server::{
    Callback, ErrorResponse, Request as Upgrade, Response as UpgradeResponse,
};

/// Clock skew tolerated on `exp` and `nbf`, in seconds.
pub const LEEWAY_SECS: u64 = 60;
/// Longest token accepted, in bytes; a longer one is refused without being decoded.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;
/// Shortest HS256 secret: RFC 7518 asks for a key at least as long as the hash (256 bits).
pub const MIN_SECRET_LEN: usize = 32;

/// Why the join token settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum JoinTokenError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{origin}: the join token secret must be at least {MIN_SECRET_LEN} bytes, got {len}")]
    ShortSecret { origin: String, len: usize },
    #[error("{}: not an RSA or EC (P-256) public key in PEM", path.display())]
    PublicKey { path: PathBuf },
}

/// Verifies join tokens. Its `Debug` shows which keys are set, never the keys.
#[derive(Clone)]
pub struct JoinTokens {
    hs256: Option<DecodingKey>,
    /// RS256 or ES256, from a public key file.
    public: Option<(Algorithm, DecodingKey)>,
}

impl fmt::Debug for JoinTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinTokens")
            .field("hs256", &self.hs256.is_some())
            .field("public", &self.public.as_ref().map(|(alg, _)| alg))
            .finish()
    }
}

impl JoinTokens {
    /// A verifier from an HS256 secret (`origin` names where it came from, for errors) and/or a
    /// PEM public key file.
    pub fn new(
        secret: Option<(&[u8], &str)>,
        public_key: Option<&Path>,
    ) -> Result<JoinTokens, JoinTokenError> {
        let hs256 = match secret {
            Some((secret, origin)) if secret.len() < MIN_SECRET_LEN => {
                return Err(JoinTokenError::ShortSecret {
                    origin: origin.to_owned(),
                    len: secret.len(),
                })
            }
            Some((secret, _)) => Some(DecodingKey::from_secret(secret)),
            None => None,
        };
        let public = match public_key {
            Some(path) => {
                let pem = std::fs::read(path).map_err(|source| JoinTokenError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                let key = if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
                    (Algorithm::RS256, key)
                } else if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
                    (Algorithm::ES256, key)
                } else {
                    return Err(JoinTokenError::PublicKey {
                        path: path.to_owned(),
                    });
                };
                Some(key)
            }
            None => None,
        };
        Ok(JoinTokens { hs256, public })
    }

    /// Checks `token`'s signature and claims; the rights it grants, or why it is refused.
    pub fn verify(&self, token: &str) -> Result<Grants, String> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(format!("token longer than {MAX_TOKEN_LEN} bytes"));
        }
        let header = jsonwebtoken::decode_header(token).map_err(describe)?;
        let key = match (header.alg, &self.hs256, &self.public) {
            (Algorithm::HS256, Some(key), _) => key,
            (alg, _, Some((public_alg, key))) if alg == *public_alg => key,
            (alg, _, _) => return Err(format!("algorithm {alg:?} is not accepted here")),
        };
        let mut validation = Validation::new(header.alg);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp"]);
        let claims = jsonwebtoken::decode::<Claims>(token, key, &validation)
            .map_err(describe)?
            .claims;
        Grants::from_claims(claims)
    }
}

/// Why a token was refused, for the error reply (never the token itself).
fn describe(e: jsonwebtoken::errors::Error) -> String {
    match e.kind() {
        ErrorKind::ExpiredSignature => "the token has expired".into(),
        ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)".into(),
        ErrorKind::InvalidSignature => "bad signature".into(),
        ErrorKind::InvalidAlgorithm => "algorithm not accepted".into(),
        ErrorKind::MissingRequiredClaim(claim) => format!("the `{claim}` claim is required"),
        ErrorKind::Json(e) => format!("invalid claims: {e}"),
        _ => format!("malformed token: {e}"),
    }
}

#[derive(serde::Deserialize)]
struct Claims {
    /// Required; optional here so that jsonwebtoken's own check names it when it is missing.
    #[serde(default)]
    exp: Option<u64>,
    #[serde(default)]
    groups: Option<Vec<GroupClaim>>,
    #[serde(default)]
    send: Option<Vec<GroupClaim>>,
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    presence: Option<Vec<GroupClaim>>,
    #[serde(default)]
    send_to_uid: Option<Vec<GroupClaim>>,
    #[serde(default)]
    send_to_all: bool,
    #[serde(default)]
    send_to_client: bool,
}

/// A group in a token: a string, or an integer (named by its decimal text, as in commands).
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum GroupClaim {
    Text(String),
    Number(serde_json::Number),
}

impl GroupClaim {
    fn into_name(self) -> Result<String, String> {
        match self {
            GroupClaim::Text(text) => Ok(text),
            GroupClaim::Number(n) if n.is_i64() || n.is_u64() => Ok(n.to_string()),
            GroupClaim::Number(n) => Err(format!("invalid claims: group {n} is not an integer")),
        }
    }
}

/// The groups a right covers.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Scope {
    Any,
    Only(HashSet<String>),
}

impl Scope {
    fn from_claim(claim: Vec<GroupClaim>) -> Result<Scope, String> {
        let mut groups = HashSet::new();
        for group in claim {
            let name = group.into_name()?;
            if name == "*" {
                return Ok(Scope::Any);
            }
            groups.insert(name);
        }
        Ok(Scope::Only(groups))
    }

    fn allows(&self, group: &str) -> bool {
        match self {
            Scope::Any => true,
            Scope::Only(groups) => groups.contains(group),
        }
    }
}

/// What a valid token allows, until it expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grants {
    join: Scope,
    send: Scope,
    presence: Scope,
    send_to_uid: Scope,
    send_to_all: bool,
    send_to_client: bool,
    /// `exp`, in seconds since the Unix epoch.
    expires: u64,
    /// `sub`: the connection's uid.
    subject: Option<String>,
}

impl Grants {
    fn from_claims(claims: Claims) -> Result<Grants, String> {
        let join = Scope::from_claim(claims.groups.unwrap_or_default())?;
        let send = match claims.send {
            Some(send) => Scope::from_claim(send)?,
            None => join.clone(),
        };
        let expires = claims.exp.ok_or("the `exp` claim is required")?;
        let none = || Scope::Only(HashSet::new());
        Ok(Grants {
            join,
            send,
            presence: match claims.presence {
                Some(claim) => Scope::from_claim(claim)?,
                None => none(),
            },
            send_to_uid: match claims.send_to_uid {
                Some(claim) => Scope::from_claim(claim)?,
                None => none(),
            },
            send_to_all: claims.send_to_all,
            send_to_client: claims.send_to_client,
            expires,
            subject: claims.sub,
        })
    }

    pub fn subject(&self) -> Option<&str> {
        self.subject.as_deref()
    }
}

/// What a connection wants to do with a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Join,
    Send,
    /// List its members, or receive its join/leave events.
    Presence,
    /// Count its members.
    Count,
}

/// What a connection wants to do beyond a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Right<'a> {
    SendToAll,
    SendToClient,
    SendToUid(&'a str),
}

/// One connection's rights.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// Tokens are not required: everything is allowed, as in the original.
    Open,
    /// Required, and none presented yet.
    NoToken,
    /// The last token presented was refused, for this reason.
    Refused(String),
    /// Boxed: every connection holds an `Access`, most of them `Open`.
    Granted(Box<Grants>),
}

impl Access {
    /// The rights of a new connection: [`Access::Open`] without a verifier; else what the token
    /// from its URL grants, if it had one.
    pub fn new(tokens: Option<&JoinTokens>, url_token: Option<&str>) -> Access {
        match (tokens, url_token) {
            (None, _) => Access::Open,
            (Some(_), None) => Access::NoToken,
            (Some(tokens), Some(token)) => Access::from_token(tokens, token),
        }
    }

    pub fn from_token(tokens: &JoinTokens, token: &str) -> Access {
        match tokens.verify(token) {
            Ok(grants) => Access::Granted(Box::new(grants)),
            Err(reason) => Access::Refused(reason),
        }
    }

    /// `Ok` if the connection may do `action` on `group` now; else the error to reply with.
    pub fn check(&self, action: Action, group: &str) -> Result<(), CommandError<'static>> {
        self.check_at(action, group, unix_now())
    }

    /// `Ok` if the connection may do `right` now; else the error to reply with.
    pub fn check_right(&self, right: Right<'_>) -> Result<(), CommandError<'static>> {
        let Some(grants) = self.valid_grants(unix_now())? else {
            return Ok(());
        };
        let (allowed, what) = match right {
            Right::SendToAll => (grants.send_to_all, "send_to_all".to_owned()),
            Right::SendToClient => (grants.send_to_client, "send_to_client".to_owned()),
            Right::SendToUid(uid) => (
                grants.send_to_uid.allows(uid),
                format!("sending to uid {uid:?}"),
            ),
        };
        if allowed {
            Ok(())
        } else {
            Err(CommandError::new(
                ErrorCode::Forbidden,
                format!("the join token does not allow {what}"),
            ))
        }
    }

    /// The uid a valid join token gives (its `sub`); `None` without tokens or without `sub`.
    pub fn token_uid(&self) -> Option<&str> {
        match self {
            Access::Granted(grants) => grants.subject(),
            _ => None,
        }
    }

    /// Tokens are not required: everything is open.
    pub fn is_open(&self) -> bool {
        matches!(self, Access::Open)
    }

    /// The grants of a valid token now; `None` when tokens are not required; the error when
    /// the connection has no valid token.
    fn valid_grants(&self, now: u64) -> Result<Option<&Grants>, CommandError<'static>> {
        let unauthorized = |reason: String| Err(CommandError::new(ErrorCode::Unauthorized, reason));
        let grants = match self {
            Access::Open => return Ok(None),
            Access::NoToken => {
                return unauthorized(
                    "a join token is required: connect with ?token=TOKEN or send \
                     {\"cmd\":\"auth\",\"token\":TOKEN} first"
                        .into(),
                )
            }
            Access::Refused(reason) => {
                return unauthorized(format!("join token refused: {reason}"))
            }
            Access::Granted(grants) => grants,
        };
        if now > grants.expires.saturating_add(LEEWAY_SECS) {
            return unauthorized(
                "join token refused: the token has expired; send a new one with auth".into(),
            );
        }
        Ok(Some(grants))
    }

    fn check_at(&self, action: Action, group: &str, now: u64) -> Result<(), CommandError<'static>> {
        let Some(grants) = self.valid_grants(now)? else {
            return Ok(());
        };
        let (allowed, verb) = match action {
            Action::Join => (grants.join.allows(group), "joining"),
            Action::Send => (grants.send.allows(group), "sending to"),
            Action::Presence => (
                grants.presence.allows(group),
                "listing the members or presence of",
            ),
            Action::Count => (
                grants.join.allows(group) || grants.presence.allows(group),
                "counting",
            ),
        };
        if allowed {
            Ok(())
        } else {
            Err(CommandError::new(
                ErrorCode::Forbidden,
                format!("the join token does not allow {verb} group {group:?}"),
            ))
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The `token` parameter of a request URL's query, percent-decoded.
pub fn url_token(request: &Upgrade) -> Option<String> {
    let query = request.uri().query()?;
    query.split('&').find_map(|pair| {
        let value = pair.strip_prefix("token=")?;
        Some(percent_decode(value))
    })
}

/// Decodes `%XX` escapes and `+` (a space in a form-encoded query). A malformed escape is kept
/// as it is: the token then fails verification, with a reason.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(hi), Some(lo)) => {
                    out.push((hi * 16 + lo) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A handshake callback that records the URL's `token` parameter, then hands the request to
/// `inner` (the Origin check), whose answer stands.
pub(crate) struct CaptureToken<'a, C> {
    token: &'a mut Option<String>,
    inner: C,
}

impl<'a, C> CaptureToken<'a, C> {
    pub(crate) fn new(token: &'a mut Option<String>, inner: C) -> Self {
        CaptureToken { token, inner }
    }
}

impl<C: Callback> Callback for CaptureToken<'_, C> {
    fn on_request(
        self,
        request: &Upgrade,
        response: UpgradeResponse,
    ) -> Result<UpgradeResponse, ErrorResponse> {
        *self.token = url_token(request);
        self.inner.on_request(request, response)
    }
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn tokens() -> JoinTokens {
        JoinTokens::new(Some((SECRET, "test")), None).expect("verifier")
    }

    fn sign(claims: serde_json::Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET),
        )
        .expect("sign")
    }

    fn in_an_hour() -> u64 {
        unix_now() + 3600
    }

    fn code(result: Result<(), CommandError<'static>>) -> Option<ErrorCode> {
        result.err().map(|e| e.code)
    }

    #[test]
    fn rights_follow_the_claims() {
        let access = Access::from_token(
            &tokens(),
            &sign(json!({"exp": in_an_hour(), "groups": ["a", 7], "send": ["b"]})),
        );
        assert_eq!(code(access.check(Action::Join, "a")), None);
        assert_eq!(code(access.check(Action::Join, "7")), None);
        assert_eq!(
            code(access.check(Action::Join, "b")),
            Some(ErrorCode::Forbidden)
        );
        assert_eq!(code(access.check(Action::Send, "b")), None);
        assert_eq!(
            code(access.check(Action::Send, "a")),
            Some(ErrorCode::Forbidden)
        );

        let access = Access::from_token(
            &tokens(),
            &sign(json!({"exp": in_an_hour(), "groups": ["a"]})),
        );
        assert_eq!(
            code(access.check(Action::Send, "a")),
            None,
            "send defaults to groups"
        );
        let access = Access::from_token(
            &tokens(),
            &sign(json!({"exp": in_an_hour(), "groups": ["*"]})),
        );
        assert_eq!(code(access.check(Action::Join, "anything")), None);
        let access = Access::from_token(&tokens(), &sign(json!({"exp": in_an_hour()})));
        assert_eq!(
            code(access.check(Action::Join, "a")),
            Some(ErrorCode::Forbidden),
            "no groups claim: nothing"
        );
    }

    #[test]
    fn cluster_rights_follow_their_claims() {
        let access = Access::from_token(
            &tokens(),
            &sign(
                json!({"exp": in_an_hour(), "sub": "42", "groups": ["a"], "presence": ["p"],
                         "send_to_uid": ["7"], "send_to_all": true}),
            ),
        );
        assert_eq!(access.token_uid(), Some("42"));
        assert_eq!(code(access.check(Action::Presence, "p")), None);
        assert_eq!(
            code(access.check(Action::Presence, "a")),
            Some(ErrorCode::Forbidden)
        );
        assert_eq!(code(access.check(Action::Count, "a")), None);
        assert_eq!(code(access.check(Action::Count, "p")), None);
        assert_eq!(
            code(access.check(Action::Count, "z")),
            Some(ErrorCode::Forbidden)
        );
        assert_eq!(code(access.check_right(Right::SendToAll)), None);
        assert_eq!(code(access.check_right(Right::SendToUid("7"))), None);
        assert_eq!(
            code(access.check_right(Right::SendToUid("8"))),
            Some(ErrorCode::Forbidden)
        );
        assert_eq!(
            code(access.check_right(Right::SendToClient)),
            Some(ErrorCode::Forbidden),
            "booleans default to false"
        );
        let bare = Access::from_token(&tokens(), &sign(json!({"exp": in_an_hour()})));
        assert_eq!(bare.token_uid(), None);
        for right in [Right::SendToAll, Right::SendToClient, Right::SendToUid("1")] {
            assert_eq!(code(bare.check_right(right)), Some(ErrorCode::Forbidden));
        }
        assert_eq!(
            code(Access::NoToken.check_right(Right::SendToAll)),
            Some(ErrorCode::Unauthorized)
        );
        assert_eq!(code(Access::Open.check_right(Right::SendToAll)), None);
    }

    #[test]
    fn refused_tokens_say_why() {
        let cases = [
            (
                sign(json!({"exp": unix_now() - 3600, "groups": ["*"]})),
                "expired",
            ),
            (sign(json!({"groups": ["*"]})), "`exp` claim is required"),
            (
                sign(json!({"exp": in_an_hour(), "groups": [1.5]})),
                "invalid claims",
            ),
            (
                sign(json!({"exp": in_an_hour(), "groups": "a"})),
                "invalid claims",
            ),
            ("not-a-token".to_owned(), "malformed token"),
            ("a.b.c".to_owned(), "malformed token"),
            ("x".repeat(MAX_TOKEN_LEN + 1), "longer than"),
        ];
        for (token, why) in cases {
            let reason = tokens().verify(&token).expect_err(why);
            assert!(reason.contains(why), "{why}: {reason}");
        }
        let other = encode(
            &Header::new(Algorithm::HS256),
            &json!({"exp": in_an_hour(), "groups": ["*"]}),
            &EncodingKey::from_secret(b"another-secret-another-secret-xx"),
        )
        .expect("sign");
        assert_eq!(
            tokens().verify(&other).expect_err("bad signature"),
            "bad signature"
        );
        let hs384 = encode(
            &Header::new(Algorithm::HS384),
            &json!({"exp": in_an_hour(), "groups": ["*"]}),
            &EncodingKey::from_secret(SECRET),
        )
        .expect("sign");
        assert!(tokens()
            .verify(&hs384)
            .expect_err("alg")
            .contains("not accepted"));
    }

    #[test]
    fn no_token_or_a_refused_one_is_unauthorized() {
        assert_eq!(Access::new(None, Some("garbage")), Access::Open);
        let none = Access::new(Some(&tokens()), None);
        assert_eq!(
            code(none.check(Action::Join, "a")),
            Some(ErrorCode::Unauthorized)
        );
        let refused = Access::new(Some(&tokens()), Some("garbage"));
        assert_eq!(
            code(refused.check(Action::Send, "a")),
            Some(ErrorCode::Unauthorized)
        );
    }

    #[test]
    fn a_token_that_expires_later_stops_granting() {
        let exp = in_an_hour();
        let access = Access::from_token(&tokens(), &sign(json!({"exp": exp, "groups": ["a"]})));
        assert_eq!(
            code(access.check_at(Action::Join, "a", exp + LEEWAY_SECS)),
            None
        );
        assert_eq!(
            code(access.check_at(Action::Join, "a", exp + LEEWAY_SECS + 1)),
            Some(ErrorCode::Unauthorized)
        );
    }

    #[test]
    fn short_secrets_and_bad_keys_are_refused() {
        let e = JoinTokens::new(Some((b"short", "--join-token-secret")), None)
            .expect_err("short")
            .to_string();
        assert!(
            e.contains("--join-token-secret") && !e.contains("short,"),
            "{e}"
        );
        let path = std::env::temp_dir().join(format!("join-key-{}.pem", std::process::id()));
        std::fs::write(
            &path,
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
        )
        .expect("write");
        let e = JoinTokens::new(None, Some(&path))
            .expect_err("bad key")
            .to_string();
        assert!(e.contains(&path.display().to_string()), "{e}");
        let _ = std::fs::remove_file(&path);
        let e = JoinTokens::new(None, Some(&path))
            .expect_err("missing")
            .to_string();
        assert!(e.contains("cannot read"), "{e}");
        assert!(!format!("{:?}", tokens()).contains("0123456789"));
    }

    #[test]
    fn url_tokens_are_percent_decoded() {
        let request = |uri: &str| Upgrade::builder().uri(uri).body(()).expect("request");
        assert_eq!(
            url_token(&request("/?token=a.b.c")).as_deref(),
            Some("a.b.c")
        );
        assert_eq!(
            url_token(&request("/ws?x=1&token=a%2Eb%zz+c&y=2")).as_deref(),
            Some("a.b%zz c")
        );
        assert_eq!(url_token(&request("/?tokens=a")), None);
        assert_eq!(url_token(&request("/")), None);
        assert_eq!(percent_decode("%4"), "%4");
    }
}
