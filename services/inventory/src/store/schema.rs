// @generated automatically by Diesel CLI.

pub mod inventory {
    diesel::table! {
        inventory.devices (id) {
            id -> Uuid,
            udi_pid -> Text,
            udi_serial -> Text,
            hostname -> Text,
            model -> Text,
            software_version -> Text,
            base_url -> Text,
            site -> Text,
            smart_account -> Text,
            virtual_account -> Text,
            username -> Text,
            password_sealed -> Text,
            is_cube -> Bool,
            network_license -> Text,
            dna_tier -> Nullable<Text>,
            revision -> Int8,
            created_at -> Timestamptz,
            updated_at -> Timestamptz,
            groups -> Array<Nullable<Text>>,
            voice_role -> Text,
        }
    }

    diesel::table! {
        inventory.sites (name) {
            name -> Text,
            description -> Text,
            created_at -> Timestamptz,
        }
    }

    diesel::allow_tables_to_appear_in_same_query!(devices, sites,);
}
