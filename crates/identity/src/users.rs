//! Static local users with argon2id password hashes.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use gateway_core::{AuthMethod, GatewayError, Identity};
use tokio::sync::Semaphore;

use crate::IdentityError;

/// The argon2id hash of a random password with the default parameters, verified when the user
/// name is unknown so that an unknown name costs as much time as a wrong password.
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRmb3JkdW1teQ$M0Fdjtb6F2lf8SH4LW2tm3XzLPeJwd2Ykj9ksq1nnLU";

/// A local user, as configured.
#[derive(Clone)]
pub struct StaticUser {
    /// The user name the client sends.
    pub name: String,
    /// An argon2id hash in PHC string form (`$argon2id$v=19$m=...`), as made by [`hash_password`].
    pub password_hash: String,
    /// Groups the user belongs to.
    pub groups: Vec<String>,
}

impl fmt::Debug for StaticUser {
    // The hash is not a secret in the usual sense, but it is an offline-guessing target: keep it
    // out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticUser")
            .field("name", &self.name)
            .field("password_hash", &"<redacted>")
            .field("groups", &self.groups)
            .finish()
    }
}

/// The set of static users, checked with argon2 on a blocking thread.
///
/// At most a few verifications run at once (argon2 uses about 19 MiB each with the default
/// parameters); further logins wait for a slot, so a flood of attempts cannot exhaust memory.
pub struct StaticUsers {
    users: HashMap<String, Arc<StaticUser>>,
    dummy_hash: Arc<str>,
    slots: Arc<Semaphore>,
}

impl fmt::Debug for StaticUsers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<&String> = self.users.keys().collect();
        names.sort();
        f.debug_struct("StaticUsers")
            .field("users", &names)
            .finish()
    }
}

impl Default for StaticUsers {
    fn default() -> Self {
        Self {
            users: HashMap::new(),
            dummy_hash: Arc::from(DUMMY_HASH),
            slots: Arc::new(Semaphore::new(slot_count())),
        }
    }
}

impl StaticUsers {
    /// Checks every user: a non-empty unique name and an argon2id PHC hash that parses.
    pub fn new(users: Vec<StaticUser>) -> Result<Self, IdentityError> {
        let mut map = HashMap::with_capacity(users.len());
        let mut first_params = None;
        for user in users {
            let invalid = |reason: String| IdentityError::InvalidUser {
                user: user.name.clone(),
                reason,
            };
            if user.name.is_empty() {
                return Err(invalid("the user name is empty".into()));
            }
            let parsed = PasswordHash::new(&user.password_hash)
                .map_err(|e| invalid(format!("password_hash is not a PHC string: {e}")))?;
            if parsed.algorithm.as_str() != "argon2id" {
                return Err(invalid(format!(
                    "password_hash uses {}, expected argon2id",
                    parsed.algorithm
                )));
            }
            let params = Params::try_from(&parsed)
                .map_err(|e| invalid(format!("password_hash parameters: {e}")))?;
            if parsed.hash.is_none() || parsed.salt.is_none() {
                return Err(invalid("password_hash has no salt or no hash".into()));
            }
            first_params.get_or_insert(params);
            if map.contains_key(&user.name) {
                return Err(invalid("the user is defined twice".into()));
            }
            map.insert(user.name.clone(), Arc::new(user));
        }
        let dummy_hash: Arc<str> = match first_params {
            // Match the work of the configured hashes when they use other parameters.
            Some(params) if cost(&params) != cost(&Params::default()) => {
                Arc::from(hash_with(&random_password(), params).map_err(IdentityError::Hashing)?)
            }
            _ => Arc::from(DUMMY_HASH),
        };
        Ok(Self {
            users: map,
            dummy_hash,
            slots: Arc::new(Semaphore::new(slot_count())),
        })
    }

    /// Whether a user of this name is configured.
    pub fn contains(&self, name: &str) -> bool {
        self.users.contains_key(name)
    }

    /// Number of configured users.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether no user is configured.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Checks `password` for `name` and returns the user's identity ([`AuthMethod::Password`]).
    /// An unknown name costs the same argon2 work as a known one and fails with the same message.
    pub async fn verify(&self, name: &str, password: &str) -> Result<Identity, GatewayError> {
        let Some(user) = self.users.get(name) else {
            self.spend_dummy_verification(password).await;
            return Err(GatewayError::auth("unknown user or wrong password"));
        };
        if self.check(user.password_hash.clone(), password).await? {
            Ok(Identity {
                subject: user.name.clone(),
                groups: user.groups.clone(),
                auth_method: AuthMethod::Password,
                claims: BTreeMap::new(),
            })
        } else {
            Err(GatewayError::auth("unknown user or wrong password"))
        }
    }

    /// Verifies `password` against a hash no password matches, to make a refusal take as long as
    /// a real check.
    pub(crate) async fn spend_dummy_verification(&self, password: &str) {
        let _ = self.check(self.dummy_hash.to_string(), password).await;
    }

    async fn check(&self, hash: String, password: &str) -> Result<bool, GatewayError> {
        let _slot = self
            .slots
            .acquire()
            .await
            .map_err(|_| GatewayError::internal("password verification is shutting down"))?;
        let password = password.as_bytes().to_vec();
        tokio::task::spawn_blocking(move || {
            PasswordHash::new(&hash)
                .map(|parsed| {
                    Argon2::default()
                        .verify_password(&password, &parsed)
                        .is_ok()
                })
                .unwrap_or(false)
        })
        .await
        .map_err(|_| GatewayError::internal("password verification failed unexpectedly"))
    }
}

/// Hashes `password` with argon2id, a random salt and the default (OWASP-recommended) parameters,
/// returning the PHC string to put in the configuration.
pub fn hash_password(password: &str) -> Result<String, IdentityError> {
    if password.is_empty() {
        return Err(IdentityError::Hashing("the password is empty".into()));
    }
    hash_with(password, Params::default()).map_err(IdentityError::Hashing)
}

fn hash_with(password: &str, params: Params) -> Result<String, String> {
    let mut salt = [0u8; 16];
    rand::Rng::fill(&mut rand::rng(), &mut salt[..]);
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| e.to_string())
}

/// The parameters that decide how long a verification takes.
fn cost(params: &Params) -> (u32, u32, u32) {
    (params.m_cost(), params.t_cost(), params.p_cost())
}

fn random_password() -> String {
    let bytes: [u8; 24] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn slot_count() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get() * 2)
        .unwrap_or(4)
        .max(2)
}

#[cfg(test)]
pub(crate) const DUMMY_HASH_FOR_TESTS: &str = DUMMY_HASH;

#[cfg(test)]
impl StaticUsers {
    pub(crate) fn dummy_hash_for_tests(&self) -> String {
        self.dummy_hash.to_string()
    }
}
