// @generated automatically by Diesel CLI.

pub mod rum {
    diesel::table! {
        rum.ack_imports (id) {
            id -> Uuid,
            device_id -> Uuid,
            cycle_id -> Nullable<Uuid>,
            report_ids -> Array<Nullable<Int8>>,
            ack -> Text,
            state -> Text,
            attempts -> Int4,
            lease_until -> Nullable<Timestamptz>,
            error -> Nullable<Text>,
            created_at -> Timestamptz,
            finished_at -> Nullable<Timestamptz>,
            confirmation -> Nullable<Text>,
            confirmation_reason -> Nullable<Text>,
            ack_received_before -> Nullable<Timestamptz>,
            ack_received_after -> Nullable<Timestamptz>,
        }
    }

    diesel::table! {
        rum.collections (cycle_id, device_id) {
            cycle_id -> Uuid,
            device_id -> Uuid,
            state -> Text,
            attempts -> Int4,
            lease_until -> Nullable<Timestamptz>,
            error -> Nullable<Text>,
            reports_new -> Int4,
            finished_at -> Nullable<Timestamptz>,
        }
    }

    diesel::table! {
        rum.device_policies (device_id) {
            device_id -> Uuid,
            source -> Text,
            reason -> Nullable<Text>,
            policy -> Jsonb,
            policy_type -> Nullable<Text>,
            ack_required -> Bool,
            device_policy -> Nullable<Jsonb>,
            installed_at -> Nullable<Timestamptz>,
            last_ack_received -> Nullable<Timestamptz>,
            device_next_ack_deadline -> Nullable<Timestamptz>,
            notes -> Nullable<Text>,
            read_failed -> Bool,
            read_at -> Timestamptz,
        }
    }

    diesel::table! {
        rum.devices (id) {
            id -> Uuid,
            udi_pid -> Text,
            udi_serial -> Text,
            hostname -> Text,
            base_url -> Text,
            smart_account -> Text,
            virtual_account -> Text,
            username -> Text,
            password_sealed -> Text,
            revision -> Int8,
            deleted -> Bool,
        }
    }

    diesel::table! {
        rum.quarantine (id) {
            id -> Int8,
            device_id -> Nullable<Uuid>,
            cycle_id -> Nullable<Uuid>,
            reason -> Text,
            body -> Bytea,
            received_at -> Timestamptz,
        }
    }

    diesel::table! {
        rum.reports (udi_pid, udi_serial, report_id) {
            udi_pid -> Text,
            udi_serial -> Text,
            report_id -> Int8,
            device_id -> Uuid,
            cycle_id -> Nullable<Uuid>,
            entitlement_tag -> Text,
            software_version -> Text,
            usage_count -> Int8,
            end_time -> Int8,
            body -> Bytea,
            received_at -> Timestamptz,
        }
    }

    diesel::allow_tables_to_appear_in_same_query!(
        ack_imports,
        collections,
        device_policies,
        devices,
        quarantine,
        reports,
    );
}
