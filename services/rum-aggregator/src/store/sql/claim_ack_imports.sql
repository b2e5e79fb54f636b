SELECT a.id, a.device_id, a.cycle_id, a.ack, d.base_url, d.username, d.password_sealed
FROM rum.ack_imports a LEFT JOIN rum.devices d ON d.id = a.device_id AND NOT d.deleted
WHERE a.state = 'pending' ORDER BY a.created_at LIMIT $1 FOR UPDATE OF a SKIP LOCKED
