UPDATE rum.ack_imports a SET state = u.state, error = u.error,
attempts = a.attempts + 1, finished_at = now()
FROM unnest($1::uuid[], $2::text[], $3::text[]) AS u(id, state, error) WHERE a.id = u.id
