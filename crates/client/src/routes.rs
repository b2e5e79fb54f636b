//! One method per route the CLI, the demo and the e2e tests call. Answers decode into the
//! caller's type `T`; request bodies are anything that serializes as the route expects.

use crate::{Answer, Client, Result};
use reqwest::Method;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt::Display;
use uuid::Uuid;

/// A listing that also answers CSV (`?format=csv`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listing {
    /// `GET /tiers/jobs`
    TierJobs,
    /// `GET /tiers/jobs/{id}/items`
    TierJobItems(Uuid),
    /// `GET /tiers/devices`: the license ledger.
    TierDevices,
    /// `GET /tiers/history`
    TierHistory,
    /// `GET /tiers/pools`
    TierPools,
    /// `GET /tiers/pools/drift`
    TierPoolDrift,
}

impl Listing {
    pub fn path(self) -> String {
        match self {
            Listing::TierJobs => "/tiers/jobs".into(),
            Listing::TierJobItems(id) => format!("/tiers/jobs/{id}/items"),
            Listing::TierDevices => "/tiers/devices".into(),
            Listing::TierHistory => "/tiers/history".into(),
            Listing::TierPools => "/tiers/pools".into(),
            Listing::TierPoolDrift => "/tiers/pools/drift".into(),
        }
    }
}

impl Client {
    /// `GET <listing>?<query>`, JSON.
    pub async fn list<T: DeserializeOwned>(
        &self,
        listing: Listing,
        query: &(impl Serialize + ?Sized),
    ) -> Result<T> {
        let req = self.request(Method::GET, &listing.path()).query(query);
        self.json(req).await
    }

    /// `GET <listing>?<query>&format=csv`: CSV as Tally writes it.
    pub async fn list_csv(
        &self,
        listing: Listing,
        query: &(impl Serialize + ?Sized),
    ) -> Result<String> {
        let req = self
            .request(Method::GET, &listing.path())
            .query(query)
            .query(&[("format", "csv")]);
        self.text(req).await
    }

    // Inventory and collection.

    /// `POST /devices/import`: every row or none.
    pub async fn import_devices<T: DeserializeOwned>(
        &self,
        rows: &(impl Serialize + ?Sized),
    ) -> Result<T> {
        self.post("/devices/import", rows).await
    }

    /// `GET /collector/status`
    pub async fn collector_status<T: DeserializeOwned>(&self) -> Result<T> {
        self.get("/collector/status").await
    }

    // License cycles.

    /// `POST /cycles`: 202 and the new cycle (409 `cycle-running` when one runs).
    pub async fn start_cycle<T: DeserializeOwned>(&self) -> Result<Answer<T>> {
        self.answer(self.request(Method::POST, "/cycles")).await
    }

    /// `GET /cycles/{id}`
    pub async fn cycle<T: DeserializeOwned>(&self, id: impl Display) -> Result<T> {
        self.get(&format!("/cycles/{id}")).await
    }

    /// `GET /cycles/{id}/failures`
    pub async fn cycle_failures<T: DeserializeOwned>(&self, id: impl Display) -> Result<T> {
        self.get(&format!("/cycles/{id}/failures")).await
    }

    // The uplink to CSSM.

    /// `GET /uplink/status`
    pub async fn uplink_status<T: DeserializeOwned>(&self) -> Result<T> {
        self.get("/uplink/status").await
    }

    /// `GET /uplink/batches`
    pub async fn uplink_batches<T: DeserializeOwned>(&self) -> Result<T> {
        self.get("/uplink/batches").await
    }

    /// `POST /uplink/offline/export`: the usage bundle (gzip) for the CSSM portal.
    pub async fn export_offline(&self) -> Result<Vec<u8>> {
        self.bytes(self.request(Method::POST, "/uplink/offline/export"))
            .await
    }

    /// `POST /uplink/offline/acks` with the portal's ACK bundle; the import summary as it came.
    pub async fn import_offline_acks(&self, bundle: Vec<u8>) -> Result<Vec<u8>> {
        self.post_bytes("/uplink/offline/acks", "application/gzip", bundle)
            .await
    }

    /// `GET /uplink/offline/exports`: the exports whose ACKs are not all in.
    pub async fn offline_exports<T: DeserializeOwned>(&self) -> Result<T> {
        self.get("/uplink/offline/exports").await
    }

    /// `GET /uplink/offline/exports/{id}`: a kept export's bundle again, byte for byte.
    pub async fn download_offline_export(&self, id: impl Display) -> Result<Vec<u8>> {
        self.bytes(self.request(Method::GET, &format!("/uplink/offline/exports/{id}")))
            .await
    }

    /// `POST /uplink/offline/exports/{id}/requeue`: that export's waiting reports back in line.
    pub async fn requeue_offline_export<T: DeserializeOwned>(&self, id: impl Display) -> Result<T> {
        self.json(self.request(
            Method::POST,
            &format!("/uplink/offline/exports/{id}/requeue"),
        ))
        .await
    }

    /// `GET /uplink/accounts`: the account directory.
    pub async fn uplink_accounts<T: DeserializeOwned>(&self) -> Result<T> {
        self.get("/uplink/accounts").await
    }

    /// `PUT /uplink/accounts`: ids an operator gives for a pair.
    pub async fn set_uplink_account<T: DeserializeOwned>(
        &self,
        body: &(impl Serialize + ?Sized),
    ) -> Result<T> {
        self.json(self.request(Method::PUT, "/uplink/accounts").json(body))
            .await
    }

    /// `DELETE /uplink/accounts?smart_account=&virtual_account=`: forget an operator's ids.
    pub async fn forget_uplink_account(
        &self,
        smart_account: &str,
        virtual_account: &str,
    ) -> Result<()> {
        let req = self.request(Method::DELETE, "/uplink/accounts").query(&[
            ("smart_account", smart_account),
            ("virtual_account", virtual_account),
        ]);
        self.send(req).await.map(|_| ())
    }

    /// `POST /uplink/accounts/refresh`: ask CSSM now.
    pub async fn refresh_uplink_accounts<T: DeserializeOwned>(&self) -> Result<T> {
        self.json(self.request(Method::POST, "/uplink/accounts/refresh"))
            .await
    }

    // Compliance and alerts.

    /// `GET /compliance/summary`
    pub async fn compliance_summary<T: DeserializeOwned>(&self) -> Result<T> {
        self.get("/compliance/summary").await
    }

    /// `GET /compliance/devices?<query>`
    pub async fn compliance_devices<T: DeserializeOwned>(
        &self,
        query: &(impl Serialize + ?Sized),
    ) -> Result<T> {
        self.json(
            self.request(Method::GET, "/compliance/devices")
                .query(query),
        )
        .await
    }

    /// `GET /alerts`
    pub async fn alerts<T: DeserializeOwned>(&self) -> Result<T> {
        self.get("/alerts").await
    }

    // DNA tiers and network licenses.

    /// `GET /tiers/catalogue`
    pub async fn tier_catalogue<T: DeserializeOwned>(&self) -> Result<T> {
        self.get("/tiers/catalogue").await
    }

    /// `GET /tiers/rules`: `{"version", "rules"}`.
    pub async fn tier_rules<T: DeserializeOwned>(&self) -> Result<T> {
        self.get("/tiers/rules").await
    }

    /// `PUT /tiers/rules` (admin).
    pub async fn put_tier_rules<T: DeserializeOwned>(
        &self,
        rules: &(impl Serialize + ?Sized),
    ) -> Result<T> {
        self.json(self.request(Method::PUT, "/tiers/rules").json(rules))
            .await
    }

    /// `DELETE /tiers/rules`: back to the shipped defaults (admin).
    pub async fn reset_tier_rules<T: DeserializeOwned>(&self) -> Result<T> {
        self.json(self.request(Method::DELETE, "/tiers/rules"))
            .await
    }

    /// `POST /tiers/pools/sync`: the pools from CSSM now.
    pub async fn sync_tier_pools<T: DeserializeOwned>(&self) -> Result<T> {
        self.json(self.request(Method::POST, "/tiers/pools/sync"))
            .await
    }

    /// `POST /tiers/pools/import`: `{"smart_account", "licenses"}` replaces that account's pools.
    pub async fn import_tier_pools<T: DeserializeOwned>(
        &self,
        import: &(impl Serialize + ?Sized),
    ) -> Result<T> {
        self.post("/tiers/pools/import", import).await
    }

    /// `POST /tiers/plan`: the dry-run of a job request.
    pub async fn tier_plan<T: DeserializeOwned>(
        &self,
        request: &(impl Serialize + ?Sized),
    ) -> Result<T> {
        self.post("/tiers/plan", request).await
    }

    /// `POST /tiers/jobs`: 201 a new job, 200 the job `idempotency_key` already started.
    pub async fn start_tier_job<T: DeserializeOwned>(
        &self,
        idempotency_key: &str,
        request: &(impl Serialize + ?Sized),
    ) -> Result<Answer<T>> {
        let req = self
            .request(Method::POST, "/tiers/jobs")
            .header("Idempotency-Key", idempotency_key)
            .json(request);
        self.answer(req).await
    }

    /// `GET /tiers/jobs/{id}`
    pub async fn tier_job<T: DeserializeOwned>(&self, id: Uuid) -> Result<T> {
        self.get(&format!("/tiers/jobs/{id}")).await
    }

    /// `POST /tiers/jobs/{id}/cancel`
    pub async fn cancel_tier_job<T: DeserializeOwned>(&self, id: Uuid) -> Result<T> {
        self.json(self.request(Method::POST, &format!("/tiers/jobs/{id}/cancel")))
            .await
    }
}
