INSERT INTO tiers.devices (id, hostname, udi_pid, udi_serial, model, software_version,
base_url, site, groups, username, password_sealed, is_cube, revision, smart_account,
virtual_account, network_license, dna_tier, network_pool, dna_pool)
SELECT u.id, u.hostname, u.pid, u.serial, u.model, u.sw, u.url, u.site,
ARRAY(SELECT jsonb_array_elements_text(u.groups::jsonb)), u.username, u.pw, u.cube,
u.rev, u.sa, u.va, u.net, u.dna, u.np, u.dp
FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
$7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::bool[], $13::int8[],
$14::text[], $15::text[], $16::text[], $17::text[], $18::text[], $19::text[])
AS u(id, hostname, pid, serial, model, sw, url, site, groups, username, pw, cube, rev,
sa, va, net, dna, np, dp)
ON CONFLICT (id) DO UPDATE SET hostname = excluded.hostname, udi_pid = excluded.udi_pid,
udi_serial = excluded.udi_serial, model = excluded.model,
software_version = excluded.software_version, base_url = excluded.base_url,
site = excluded.site, groups = excluded.groups, username = excluded.username,
password_sealed = excluded.password_sealed, is_cube = excluded.is_cube,
revision = excluded.revision
WHERE tiers.devices.revision < excluded.revision
