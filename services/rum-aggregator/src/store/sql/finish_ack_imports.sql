UPDATE rum.ack_imports a SET state = u.state, error = u.error,
attempts = a.attempts + 1, finished_at = now(), confirmation = u.confirmation,
confirmation_reason = u.confirmation_reason, ack_received_before = u.before,
ack_received_after = u.after
FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[],
$7::timestamptz[]) AS u(id, state, error, confirmation, confirmation_reason, before, after)
WHERE a.id = u.id
