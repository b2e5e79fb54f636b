INSERT INTO rum.devices (id, udi_pid, udi_serial, hostname, base_url, smart_account,
virtual_account, username, password_sealed, revision)
SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[],
$6::text[], $7::text[], $8::text[], $9::text[], $10::int8[])
ON CONFLICT (id) DO UPDATE SET udi_pid = excluded.udi_pid, udi_serial = excluded.udi_serial,
hostname = excluded.hostname, base_url = excluded.base_url, smart_account = excluded.smart_account,
virtual_account = excluded.virtual_account, username = excluded.username,
password_sealed = excluded.password_sealed, revision = excluded.revision, deleted = false
WHERE rum.devices.revision < excluded.revision
