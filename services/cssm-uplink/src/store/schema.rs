// @generated automatically by Diesel CLI.

pub mod uplink {
    diesel::table! {
        uplink.account_refreshes (id) {
            id -> Int2,
            at -> Timestamptz,
            error -> Nullable<Text>,
            smart_accounts -> Int4,
            virtual_accounts -> Int4,
        }
    }

    diesel::table! {
        uplink.accounts (source, smart_account, virtual_account) {
            source -> Text,
            smart_account -> Text,
            smart_account_name -> Nullable<Text>,
            virtual_account -> Text,
            smart_account_id -> Text,
            virtual_account_id -> Text,
            updated_at -> Timestamptz,
        }
    }

    diesel::table! {
        uplink.acks (batch_id, device_id) {
            batch_id -> Uuid,
            device_id -> Uuid,
            report_ids -> Array<Nullable<Int8>>,
            ack -> Text,
            created_at -> Timestamptz,
        }
    }

    diesel::table! {
        uplink.batches (id) {
            id -> Uuid,
            mode -> Text,
            smart_account -> Text,
            virtual_account -> Text,
            nonce -> Text,
            state -> Text,
            poll_id -> Nullable<Text>,
            attempts -> Int4,
            next_attempt_at -> Timestamptz,
            error -> Nullable<Text>,
            reports -> Int4,
            devices -> Int4,
            created_at -> Timestamptz,
            updated_at -> Timestamptz,
            export_id -> Nullable<Uuid>,
            error_class -> Nullable<Text>,
            retried_at -> Nullable<Timestamptz>,
            poll_id_numeric -> Bool,
        }
    }

    diesel::table! {
        uplink.exports (id) {
            id -> Uuid,
            file_name -> Text,
            smart_account -> Text,
            bundle -> Bytea,
            reports -> Int4,
            devices -> Int4,
            created_at -> Timestamptz,
            names_without_ids -> Array<Nullable<Text>>,
        }
    }

    diesel::table! {
        uplink.reports (udi_pid, udi_serial, report_id) {
            udi_pid -> Text,
            udi_serial -> Text,
            report_id -> Int8,
            device_id -> Uuid,
            cycle_id -> Nullable<Uuid>,
            smart_account -> Text,
            virtual_account -> Text,
            body -> Bytea,
            state -> Text,
            batch_id -> Nullable<Uuid>,
            error -> Nullable<Text>,
            received_at -> Timestamptz,
        }
    }

    diesel::table! {
        uplink.unmatched_acks (id) {
            id -> Uuid,
            batch_id -> Uuid,
            udi_pid -> Nullable<Text>,
            udi_serial -> Nullable<Text>,
            report_ids -> Array<Nullable<Int8>>,
            ack -> Text,
            reason -> Text,
            created_at -> Timestamptz,
        }
    }

    diesel::joinable!(batches -> exports (export_id));

    diesel::allow_tables_to_appear_in_same_query!(
        account_refreshes,
        accounts,
        acks,
        batches,
        exports,
        reports,
        unmatched_acks,
    );
}
