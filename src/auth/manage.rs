//! Key management, shared by the admin API (`admin.rs`) and the command line (`detour keys`):
//! create (the secret is returned once), list, show, change, disable, revoke, top up, set a
//! key's own provider credentials, read its usage and ledger. Takes and returns JSON; never
//! returns a hash or a credential.

use super::seal::{Byok, Sealer};
use super::secret;
use crate::store::{KeyChange, KeyPolicy, KeyView, Micros, NewKey, Store, StoreError};
use serde::Deserialize;
use serde_json::{json, Value};

/// A refusal, with the HTTP status the admin API answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub status: u16,
    pub message: String,
}

fn refused(status: u16, message: impl Into<String>) -> Refused {
    Refused {
        status,
        message: message.into(),
    }
}

impl From<StoreError> for Refused {
    fn from(e: StoreError) -> Refused {
        match e {
            StoreError::NoSuchKey => refused(404, "no such key"),
            StoreError::Invalid(m) => refused(400, m),
            StoreError::Unavailable(m) => refused(503, format!("the store is unavailable: {m}")),
        }
    }
}

/// The operations, over one store.
pub struct Manager<'a> {
    pub store: &'a dyn Store,
    pub sealer: Option<&'a Sealer>,
    /// The configured providers' names and kinds (BYOK credentials are for one of them).
    pub providers: Vec<(String, &'static str)>,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct Create {
    name: String,
    #[serde(default)]
    policy: KeyPolicy,
    #[serde(default)]
    credits_usd: Option<f64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct Change {
    name: Option<String>,
    /// Fields to change; the others stay.
    policy: Option<serde_json::Map<String, Value>>,
    disabled: Option<bool>,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct TopUp {
    usd: Option<f64>,
    micros: Option<Micros>,
    #[serde(default)]
    note: String,
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Refused> {
    serde_json::from_slice(body).map_err(|e| refused(400, format!("invalid body: {e}")))
}

/// USD as micro-dollars, refusing what is not a finite amount within ±1e9 USD.
pub fn micros_of(usd: f64) -> Result<Micros, Refused> {
    if !usd.is_finite() || usd.abs() > 1e9 {
        return Err(refused(400, "an amount is a number of USD within ±1e9"));
    }
    Ok((usd * 1e6).round() as Micros)
}

/// A key as shown: its view with the money also in USD.
pub fn shown(v: &KeyView) -> Value {
    let mut j = serde_json::to_value(v).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut j {
        m.insert("balance_usd".into(), json!(v.balance as f64 / 1e6));
        m.insert("reserved_usd".into(), json!(v.reserved as f64 / 1e6));
    }
    j
}

fn check_name(name: &str) -> Result<(), Refused> {
    if name.trim().is_empty() || name.len() > 200 || name.chars().any(char::is_control) {
        return Err(refused(400, "a name is 1 to 200 printable characters"));
    }
    Ok(())
}

impl Manager<'_> {
    async fn view(&self, id: &str) -> Result<KeyView, Refused> {
        self.store
            .key(id)
            .await?
            .ok_or_else(|| refused(404, "no such key"))
    }

    pub async fn create(&self, body: &[u8]) -> Result<Value, Refused> {
        let c: Create = parse(body)?;
        check_name(&c.name)?;
        let (id, key) = secret::new_key().map_err(|e| refused(500, e))?;
        let created = crate::store::now_ms() / 1000;
        let new = NewKey {
            id: id.clone(),
            name: c.name,
            hash: secret::hash(&key),
            policy: c.policy,
            created,
        };
        self.store.create_key(new).await?;
        if let Some(usd) = c.credits_usd {
            self.store
                .top_up(&id, micros_of(usd)?, "initial credits")
                .await?;
        }
        let mut out = shown(&self.view(&id).await?);
        if let Value::Object(m) = &mut out {
            m.insert("key".into(), json!(key));
        }
        Ok(out)
    }

    pub async fn list(&self) -> Result<Value, Refused> {
        let keys = self.store.keys().await?;
        Ok(json!({"object": "list", "data": keys.iter().map(shown).collect::<Vec<_>>()}))
    }

    pub async fn show(&self, id: &str) -> Result<Value, Refused> {
        Ok(shown(&self.view(id).await?))
    }

    pub async fn change(&self, id: &str, body: &[u8]) -> Result<Value, Refused> {
        let c: Change = parse(body)?;
        let current = self.view(id).await?;
        if let Some(n) = &c.name {
            check_name(n)?;
        }
        let policy = match c.policy {
            None => None,
            Some(fields) => {
                let mut p = match serde_json::to_value(&current.policy) {
                    Ok(Value::Object(m)) => m,
                    _ => serde_json::Map::new(),
                };
                p.extend(fields);
                Some(
                    serde_json::from_value::<KeyPolicy>(Value::Object(p))
                        .map_err(|e| refused(400, format!("invalid policy: {e}")))?,
                )
            }
        };
        let ch = KeyChange {
            name: c.name,
            policy,
            disabled: c.disabled,
            ..KeyChange::default()
        };
        self.store.change_key(id, ch).await?;
        self.show(id).await
    }

    pub async fn revoke(&self, id: &str) -> Result<Value, Refused> {
        let ch = KeyChange {
            revoke: true,
            ..KeyChange::default()
        };
        self.store.change_key(id, ch).await?;
        self.show(id).await
    }

    pub async fn top_up(&self, id: &str, body: &[u8]) -> Result<Value, Refused> {
        let t: TopUp = parse(body)?;
        let amount = match (t.usd, t.micros) {
            (Some(u), None) => micros_of(u)?,
            (None, Some(m)) => m,
            _ => return Err(refused(400, "give one of `usd` or `micros`")),
        };
        if t.note.len() > 200 {
            return Err(refused(400, "a note is at most 200 bytes"));
        }
        self.store.top_up(id, amount, &t.note).await?;
        self.show(id).await
    }

    /// Set (`Some(body)`) or remove (`None`) the key's own credentials for `provider`.
    pub async fn byok(
        &self,
        id: &str,
        provider: &str,
        body: Option<&[u8]>,
    ) -> Result<Value, Refused> {
        let Some((_, kind)) = self.providers.iter().find(|(p, _)| p == provider) else {
            return Err(refused(404, "no such provider in the config"));
        };
        let sealed = match body {
            None => None,
            Some(b) => {
                let creds: Byok = parse(b)?;
                creds.check(kind).map_err(|m| refused(400, m))?;
                let sealer = self.sealer.ok_or_else(|| {
                    refused(
                        409,
                        "no master key is set (auth.master-key-env): BYOK credentials cannot \
                         be stored",
                    )
                })?;
                Some(
                    sealer
                        .seal(id, provider, &creds)
                        .map_err(|e| refused(500, e))?,
                )
            }
        };
        let ch = KeyChange {
            byok: Some((provider.to_string(), sealed)),
            ..KeyChange::default()
        };
        self.store.change_key(id, ch).await?;
        self.show(id).await
    }

    pub async fn usage(&self, id: &str, days: u32) -> Result<Value, Refused> {
        self.view(id).await?;
        let rows = self.store.usage(id, days.clamp(1, 366)).await?;
        Ok(json!({"object": "list", "key": id, "data": rows}))
    }

    pub async fn ledger(&self, id: &str, limit: usize) -> Result<Value, Refused> {
        self.view(id).await?;
        let rows = self.store.ledger(id, limit.clamp(1, 10_000)).await?;
        // Read after the rows: the balance includes every row shown.
        let view = self.view(id).await?;
        Ok(json!({"object": "list", "key": id, "balance": view.balance, "data": rows}))
    }
}
