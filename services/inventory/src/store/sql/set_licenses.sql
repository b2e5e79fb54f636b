UPDATE inventory.devices d SET network_license = u.network_license,
dna_tier = NULLIF(u.dna_tier, ''),
virtual_account = COALESCE(NULLIF(u.virtual_account, ''), d.virtual_account),
revision = d.revision + 1, updated_at = now()
FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[])
AS u(id, network_license, dna_tier, virtual_account)
WHERE d.id = u.id RETURNING d.*
