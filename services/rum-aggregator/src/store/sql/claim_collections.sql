SELECT c.cycle_id, c.device_id, d.udi_pid, d.udi_serial, d.base_url, d.username,
d.password_sealed, d.smart_account, d.virtual_account, d.deleted
FROM rum.collections c JOIN rum.devices d ON d.id = c.device_id
WHERE c.state = 'pending' ORDER BY c.cycle_id, c.device_id
LIMIT $1 FOR UPDATE OF c SKIP LOCKED
