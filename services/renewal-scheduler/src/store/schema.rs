// @generated automatically by Diesel CLI.

pub mod sched {
    diesel::table! {
        sched.alerts (id) {
            id -> Uuid,
            subject -> Text,
            kind -> Text,
            due -> Timestamptz,
            threshold -> Text,
            severity -> Text,
            device_id -> Nullable<Uuid>,
            hostname -> Text,
            site -> Text,
            virtual_account -> Text,
            message -> Text,
            silenced -> Bool,
            fired_at -> Timestamptz,
            acknowledged_at -> Nullable<Timestamptz>,
            acknowledged_by -> Nullable<Text>,
        }
    }

    diesel::table! {
        sched.catalyst_tasks (id) {
            id -> Uuid,
            kind -> Text,
            smart_account -> Text,
            virtual_account -> Text,
            device_ids -> Array<Nullable<Uuid>>,
            requested_by -> Text,
            is_error -> Bool,
            progress -> Text,
            failure_reason -> Nullable<Text>,
            job_id -> Nullable<Uuid>,
            created_at -> Timestamptz,
            finished_at -> Nullable<Timestamptz>,
        }
    }

    diesel::table! {
        sched.compliance_counts (dim, key, status, critical) {
            dim -> Text,
            key -> Text,
            status -> Text,
            critical -> Bool,
            n -> Int8,
        }
    }

    diesel::table! {
        sched.cycle_acks (cycle_id, device_id) {
            cycle_id -> Uuid,
            device_id -> Uuid,
            ok -> Bool,
        }
    }

    diesel::table! {
        sched.cycle_failures (cycle_id, device_id, stage) {
            cycle_id -> Uuid,
            device_id -> Uuid,
            stage -> Text,
            reason -> Text,
            at -> Timestamptz,
        }
    }

    diesel::table! {
        sched.cycles (id) {
            id -> Uuid,
            trigger -> Text,
            scheduled_for -> Nullable<Timestamptz>,
            state -> Text,
            started_at -> Timestamptz,
            finished_at -> Nullable<Timestamptz>,
            collection_started -> Bool,
            devices -> Int4,
            devices_ok -> Int4,
            devices_failed -> Int4,
            devices_with_reports -> Int4,
            reports_stored -> Int4,
            reports_quarantined -> Int4,
            reports_duplicate -> Int4,
            reports_uploaded -> Int4,
            reports_upload_failed -> Int4,
            devices_upload_failed -> Int4,
            batches -> Int4,
            acks_imported -> Int4,
            acks_failed -> Int4,
        }
    }

    diesel::table! {
        sched.devices (id) {
            id -> Uuid,
            hostname -> Text,
            udi_pid -> Text,
            udi_serial -> Text,
            model -> Text,
            software_version -> Text,
            base_url -> Text,
            site -> Text,
            groups -> Array<Nullable<Text>>,
            smart_account -> Text,
            virtual_account -> Text,
            is_cube -> Bool,
            network_license -> Text,
            dna_tier -> Nullable<Text>,
            revision -> Int8,
            deleted -> Bool,
            first_seen_at -> Timestamptz,
            updated_at -> Timestamptz,
            last_upload_at -> Nullable<Timestamptz>,
            last_ack_at -> Nullable<Timestamptz>,
            deadline -> Nullable<Timestamptz>,
            ack_pending -> Bool,
            role -> Text,
            critical -> Bool,
            assessed -> Bool,
            status -> Text,
            status_until -> Nullable<Timestamptz>,
            out_of_compliance -> Bool,
            voice_role -> Text,
            assessed_at -> Nullable<Timestamptz>,
            policy -> Nullable<Jsonb>,
            licenses_changed_at -> Nullable<Timestamptz>,
        }
    }

    diesel::table! {
        sched.pool_syncs (smart_account) {
            smart_account -> Text,
            synced_at -> Timestamptz,
        }
    }

    diesel::table! {
        sched.pool_terms (smart_account, virtual_account, license, line) {
            smart_account -> Text,
            virtual_account -> Text,
            license -> Text,
            line -> Int4,
            subscription_id -> Text,
            license_type -> Text,
            quantity -> Int8,
            start_date -> Nullable<Timestamptz>,
            end_date -> Nullable<Timestamptz>,
        }
    }

    diesel::table! {
        sched.pools (smart_account, virtual_account, license) {
            smart_account -> Text,
            virtual_account -> Text,
            license -> Text,
            level -> Text,
            models -> Array<Nullable<Text>>,
            quantity -> Int8,
            cssm_in_use -> Int8,
            held -> Int8,
            over_since -> Nullable<Timestamptz>,
            synced_at -> Timestamptz,
        }
    }

    diesel::table! {
        sched.silences (id) {
            id -> Uuid,
            kind -> Nullable<Text>,
            site -> Nullable<Text>,
            device_id -> Nullable<Uuid>,
            until -> Timestamptz,
            reason -> Text,
            created_by -> Text,
            created_at -> Timestamptz,
        }
    }

    diesel::allow_tables_to_appear_in_same_query!(
        alerts,
        catalyst_tasks,
        compliance_counts,
        cycle_acks,
        cycle_failures,
        cycles,
        devices,
        pool_syncs,
        pool_terms,
        pools,
        silences,
    );
}
