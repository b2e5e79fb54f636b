// @generated automatically by Diesel CLI.

pub mod tiers {
    diesel::table! {
        tiers.devices (id) {
            id -> Uuid,
            hostname -> Text,
            udi_pid -> Text,
            udi_serial -> Text,
            model -> Text,
            software_version -> Text,
            base_url -> Text,
            site -> Text,
            groups -> Array<Nullable<Text>>,
            username -> Text,
            password_sealed -> Text,
            is_cube -> Bool,
            revision -> Int8,
            deleted -> Bool,
            smart_account -> Text,
            virtual_account -> Text,
            network_license -> Text,
            dna_tier -> Nullable<Text>,
            network_pool -> Nullable<Text>,
            dna_pool -> Nullable<Text>,
            state -> Text,
            job_id -> Nullable<Uuid>,
            reported_dna_tier -> Nullable<Text>,
            reported_at -> Nullable<Timestamptz>,
        }
    }

    diesel::table! {
        tiers.history (id) {
            id -> Int8,
            device_id -> Uuid,
            at -> Timestamptz,
            kind -> Text,
            event -> Text,
            from_value -> Nullable<Text>,
            to_value -> Nullable<Text>,
            job_id -> Nullable<Uuid>,
            detail -> Text,
        }
    }

    diesel::table! {
        tiers.job_items (job_id, device_id) {
            job_id -> Uuid,
            device_id -> Uuid,
            seq -> Int4,
            hostname -> Text,
            state -> Text,
            from_network -> Text,
            from_dna -> Nullable<Text>,
            from_va -> Text,
            from_network_pool -> Nullable<Text>,
            from_dna_pool -> Nullable<Text>,
            to_network -> Text,
            to_dna -> Nullable<Text>,
            to_va -> Text,
            to_network_pool -> Nullable<Text>,
            to_dna_pool -> Nullable<Text>,
            error -> Nullable<Text>,
            attempts -> Int4,
            claim -> Nullable<Uuid>,
            claimed_until -> Nullable<Timestamptz>,
            updated_at -> Timestamptz,
        }
    }

    diesel::table! {
        tiers.jobs (id) {
            id -> Uuid,
            idempotency_key -> Nullable<Text>,
            request_hash -> Text,
            request -> Jsonb,
            mode -> Text,
            state -> Text,
            cancel_requested -> Bool,
            fingerprint -> Text,
            requested_by -> Text,
            devices_total -> Int4,
            rejected -> Int4,
            applied -> Int4,
            failed -> Int4,
            cancelled -> Int4,
            reverted -> Int4,
            confirmed -> Int4,
            pools -> Jsonb,
            error -> Nullable<Text>,
            created_at -> Timestamptz,
            updated_at -> Timestamptz,
            finished_at -> Nullable<Timestamptz>,
        }
    }

    diesel::table! {
        tiers.pools (smart_account, virtual_account, license) {
            smart_account -> Text,
            virtual_account -> Text,
            license -> Text,
            quantity -> Int8,
            cssm_in_use -> Int8,
            cssm_available -> Int8,
            status -> Text,
            details -> Jsonb,
            synced_at -> Timestamptz,
        }
    }

    diesel::table! {
        tiers.rules (id) {
            id -> Int2,
            doc -> Jsonb,
            version -> Int8,
            updated_by -> Text,
            updated_at -> Timestamptz,
        }
    }

    diesel::joinable!(job_items -> jobs (job_id));

    diesel::allow_tables_to_appear_in_same_query!(devices, history, job_items, jobs, pools, rules,);
}
