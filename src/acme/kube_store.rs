//! Storage in the cluster, for replicas (`storage = "kubernetes"`): the certificate in a
//! `kubernetes.io/tls` Secret (tls.crt: the chain, tls.key: its key), the account in a second
//! Secret (one key per CA directory, as the directory storage has one file each), and the
//! challenges of the order in flight on the Lease (see `lease`).
//!
//! fluxgate only gets and updates these objects, by name: a Role cannot limit `create` to
//! names, so the deployment creates them empty (deploy/acme) and a missing one is an error that
//! says which and how. Every update carries the resourceVersion it read.

use super::lease::{explain, LeaseLock};
use super::storage::{account_name, parse, Stored};
use super::{Challenges, KubeStorage};
use crate::relay::kube::ApiError;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::PostParams;
use kube::{Api, Client};
use std::time::Duration;

pub const TLS_TYPE: &str = "kubernetes.io/tls";
const CONFLICT_RETRIES: usize = 5;

pub struct KubeStore {
    secrets: Api<Secret>,
    pub settings: KubeStorage,
    pub lease: LeaseLock,
}

/// The certificate Secret as read: its version, and the certificate if it holds one.
pub struct TlsRead {
    pub version: String,
    pub stored: Option<Stored>,
}

impl KubeStore {
    pub fn new(client: Client, settings: KubeStorage) -> Self {
        KubeStore {
            secrets: Api::namespaced(client.clone(), &settings.namespace),
            lease: LeaseLock::new(
                client,
                &settings.namespace,
                &settings.lease,
                &settings.identity,
            ),
            settings,
        }
    }

    fn label(&self, name: &str) -> String {
        format!("Secret {}/{name}", self.settings.namespace)
    }

    async fn get(&self, name: &str) -> Result<Secret, String> {
        self.secrets
            .get(name)
            .await
            .map_err(|e| explain(ApiError::from(e), "get", &self.label(name)))
    }

    /// Sets `data` keys of Secret `name` from a fresh read, again after a 409.
    async fn update(&self, name: &str, data: &[(&str, &[u8])]) -> Result<(), String> {
        for _ in 0..CONFLICT_RETRIES {
            let mut s = self.get(name).await?;
            let d = s.data.get_or_insert_with(Default::default);
            for (k, v) in data {
                d.insert(k.to_string(), ByteString(v.to_vec()));
            }
            match self.secrets.replace(name, &PostParams::default(), &s).await {
                Ok(_) => return Ok(()),
                Err(e) => {
                    let e = ApiError::from(e);
                    if e.code() != Some(409) {
                        return Err(explain(e, "update", &self.label(name)));
                    }
                }
            }
        }
        Err(format!(
            "cannot update {}: it kept changing under this replica",
            self.label(name)
        ))
    }

    pub async fn load_account(&self, directory: &str) -> Result<Option<Vec<u8>>, String> {
        let s = self.get(&self.settings.account_secret).await?;
        Ok(s.data
            .and_then(|mut d| d.remove(&account_name(directory)))
            .map(|b| b.0)
            .filter(|b| !b.is_empty()))
    }

    pub async fn save_account(&self, directory: &str, json: &[u8]) -> Result<(), String> {
        let key = account_name(directory);
        self.update(&self.settings.account_secret, &[(&key, json)])
            .await
    }

    /// Reads the certificate's Secret: empty (as deploy/acme creates it) is no certificate.
    pub async fn read_certificate(&self) -> Result<TlsRead, String> {
        let name = &self.settings.secret;
        let s = self.get(name).await?;
        let label = self.label(name);
        if s.type_.as_deref() != Some(TLS_TYPE) {
            return Err(format!(
                "{label} is of type {}, not {TLS_TYPE}: delete it and create it again with the deploy/acme component",
                s.type_.as_deref().unwrap_or("Opaque")
            ));
        }
        let version = s.metadata.resource_version.clone().unwrap_or_default();
        let mut data = s.data.unwrap_or_default();
        let mut take = |k: &str| {
            data.remove(k)
                .map(|b| String::from_utf8_lossy(&b.0).into_owned())
                .unwrap_or_default()
        };
        let (crt, key) = (take("tls.crt"), take("tls.key"));
        if crt.trim().is_empty() && key.trim().is_empty() {
            return Ok(TlsRead {
                version,
                stored: None,
            });
        }
        let stored = parse(format!("{}\n{}", crt.trim_end(), key))
            .map_err(|e| format!("{label}: tls.crt and tls.key: {e}"))?;
        Ok(TlsRead {
            version,
            stored: Some(stored),
        })
    }

    pub async fn load_certificate(&self) -> Result<Option<(Stored, String)>, String> {
        let r = self.read_certificate().await?;
        Ok(r.stored.map(|s| (s, r.version)))
    }

    /// Writes the chain to tls.crt and the key to tls.key.
    pub async fn save_certificate(&self, pem: &str) -> Result<(), String> {
        let (crt, key) = split_key(pem).ok_or("the certificate to store holds no private key")?;
        self.update(
            &self.settings.secret,
            &[("tls.crt", crt.as_bytes()), ("tls.key", key.as_bytes())],
        )
        .await
    }

    /// Puts the challenges on the Lease, then waits until the other replicas answer them (they
    /// acknowledge on the Lease), at most two of their poll intervals and 5 s: the CA's
    /// validation may reach any of them as soon as it is told to validate.
    pub async fn publish(&self, c: &Challenges) -> Result<(), String> {
        self.lease.publish(c).await.map_err(|e| e.to_string())?;
        let limit = self.settings.poll_interval * 2 + Duration::from_secs(5);
        let missing = self.lease.wait_acks(&c.id, limit).await?;
        if missing.is_empty() {
            tracing::info!(challenges = %c.id, "every replica answers the challenges");
        } else {
            tracing::warn!(
                challenges = %c.id,
                ?missing,
                "replicas that did not acknowledge the challenges in time; validating anyway"
            );
        }
        Ok(())
    }
}

/// Splits a chain-then-key PEM at the key's block.
fn split_key(pem: &str) -> Option<(String, String)> {
    let at = pem
        .match_indices("-----BEGIN ")
        .map(|(i, _)| i)
        .find(|&i| {
            pem[i..]
                .lines()
                .next()
                .is_some_and(|l| l.contains("PRIVATE KEY"))
        })?;
    Some((
        pem[..at].trim_end().to_string() + "\n",
        pem[at..].to_string(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_pem_splits_into_chain_and_key() {
        let pem = "-----BEGIN CERTIFICATE-----\nA\n-----END CERTIFICATE-----\n-----BEGIN CERTIFICATE-----\nB\n-----END CERTIFICATE-----\n\n-----BEGIN PRIVATE KEY-----\nK\n-----END PRIVATE KEY-----\n";
        let (crt, key) = split_key(pem).unwrap();
        assert_eq!(crt.matches("BEGIN CERTIFICATE").count(), 2);
        assert!(!crt.contains("PRIVATE"));
        assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"));
        assert!(split_key("-----BEGIN CERTIFICATE-----\n").is_none());
    }
}
