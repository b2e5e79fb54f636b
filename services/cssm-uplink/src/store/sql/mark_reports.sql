UPDATE uplink.reports r SET state = $4, batch_id = $5 FROM unnest($1::text[], $2::text[], $3::int8[])
AS u(p, s, id) WHERE r.udi_pid = u.p AND r.udi_serial = u.s AND r.report_id = u.id
