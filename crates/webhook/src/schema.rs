// @generated automatically by Diesel CLI.

pub mod sched {
    diesel::table! {
        sched.webhook_deliveries (id) {
            id -> Uuid,
            webhook_id -> Uuid,
            event_id -> Uuid,
            kind -> Text,
            payload -> Bytea,
            state -> Text,
            attempts -> Int4,
            next_attempt_at -> Timestamptz,
            claim -> Nullable<Uuid>,
            last_status -> Nullable<Int4>,
            last_error -> Nullable<Text>,
            created_at -> Timestamptz,
            delivered_at -> Nullable<Timestamptz>,
        }
    }

    diesel::table! {
        sched.webhooks (id) {
            id -> Uuid,
            url -> Text,
            secret_sealed -> Text,
            description -> Text,
            events -> Array<Nullable<Text>>,
            enabled -> Bool,
            created_at -> Timestamptz,
        }
    }

    diesel::joinable!(webhook_deliveries -> webhooks (webhook_id));

    diesel::allow_tables_to_appear_in_same_query!(webhook_deliveries, webhooks,);
}
